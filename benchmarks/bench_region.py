"""pytest-benchmark suite for dice_loss (sigmoid=True): every provider, mode, size and dtype of the
tables in benchmarks/common.py (on the GPU when there is one, else on the CPU). Not part of the tests:

    python -m pytest benchmarks/bench_region.py --benchmark-group-by=param:mode,param:size,param:dtype
"""

from benchmarks.common import parametrize_cells, run_benchmark


@parametrize_cells
def test_dice(benchmark, mode, size, dtype, provider):
    run_benchmark(benchmark, "dice_loss", provider, mode, size, dtype)
