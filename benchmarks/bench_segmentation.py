"""pytest-benchmark suite for segmentation_loss: every provider, mode, size and dtype of the tables in
benchmarks/common.py (on the GPU when there is one, else on the CPU). Not part of the tests:

    python -m pytest benchmarks/bench_segmentation.py --benchmark-group-by=param:mode,param:size,param:dtype
"""

import pytest

from benchmarks.common import BENCH_DTYPES, BENCH_SIZES, MODES, PROVIDERS, run_benchmark


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("dtype", BENCH_DTYPES)
@pytest.mark.parametrize("size", BENCH_SIZES)
@pytest.mark.parametrize("mode", MODES)
def test_segmentation(benchmark, mode, size, dtype, provider):
    run_benchmark(benchmark, "segmentation_loss", provider, mode, size, dtype)
