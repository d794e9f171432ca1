"""pytest-benchmark suite, CPU: forward and forward+backward of both losses at (16, 1, 512, 512)
float32 for the eager reference, torch.compile of it and the native kernels.

    python -m pytest benchmarks/bench_cpu.py --benchmark-group-by=param:loss,param:mode
"""

import pytest

from benchmarks.common import LOSSES, MODES, PROVIDERS, make_inputs, workload

SHAPE = (16, 1, 512, 512)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("loss", LOSSES)
def test_cpu(benchmark, loss, mode, provider):
    x, t = make_inputs(loss, SHAPE)
    step = workload(loss, provider, mode, x, t)
    step()  # compile, warm caches
    benchmark.pedantic(step, rounds=15, warmup_rounds=2)
