"""pytest-benchmark suite for mse_loss: every provider, mode, size and dtype of the tables in
benchmarks/common.py (on the GPU when there is one, else on the CPU). Not part of the tests:

    python -m pytest benchmarks/bench_mse.py --benchmark-group-by=param:mode,param:size,param:dtype
"""

from benchmarks.common import parametrize_cells, run_benchmark


@parametrize_cells
def test_mse(benchmark, mode, size, dtype, provider):
    run_benchmark(benchmark, "mse_loss", provider, mode, size, dtype)
