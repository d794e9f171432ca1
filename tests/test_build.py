"""What the build put into pylosses._C: a kernel for every op on every device type it was built
for. A CUDA source that silently drops out of the build fails here (CI builds with CUDA and sets
PYLOSSES_REQUIRE_CUDA=1, see .ci/run)."""

import os

import pytest
import torch

import pylosses  # noqa: F401  (loads pylosses._C)


def _ops_with_kernel(key: str):
    return sorted(op for op in torch._C._dispatch_get_registrations_for_dispatch_key(key)
                  if op.startswith("pylosses::") and torch._C._dispatch_has_kernel_for_dispatch_key(op, key))


def test_every_op_has_a_cpu_kernel():
    defined = sorted(name for name in torch._C._dispatch_get_all_op_names()
                     if name.startswith("pylosses::") and not name.startswith("pylosses::triton_"))
    assert defined, "no pylosses ops: the extension did not load"
    assert _ops_with_kernel("CPU") == defined


# Ops with a CPU kernel only, for now: on CUDA tensors pylosses.functional composes what they
# compute from torch ops and the ops that have CUDA kernels (README, "Multi-class")
CPU_ONLY = ["pylosses::softmax_region_sums", "pylosses::softmax_region_sums_backward"]


def test_every_cpu_op_has_a_cuda_kernel():
    cpu, cuda = _ops_with_kernel("CPU"), _ops_with_kernel("CUDA")
    if not cuda and os.environ.get("PYLOSSES_REQUIRE_CUDA") != "1":
        pytest.skip("pylosses._C was built without CUDA (set FORCE_CUDA=1 to build it; CI does)")
    assert cpu, "no CPU kernels registered"
    assert set(CPU_ONLY) <= set(cpu), "CPU_ONLY names an op that has no CPU kernel"
    missing = sorted(set(cpu) - set(cuda) - set(CPU_ONLY))
    assert not missing and not set(CPU_ONLY) & set(cuda), \
        f"ops with a CPU kernel but no CUDA kernel: {missing} (or CPU_ONLY is stale: {set(CPU_ONLY) & set(cuda)})"
