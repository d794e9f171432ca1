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


def test_every_cpu_op_has_a_cuda_kernel():
    cpu, cuda = _ops_with_kernel("CPU"), _ops_with_kernel("CUDA")
    if not cuda and os.environ.get("PYLOSSES_REQUIRE_CUDA") != "1":
        pytest.skip("pylosses._C was built without CUDA (set FORCE_CUDA=1 to build it; CI does)")
    assert cpu, "no CPU kernels registered"
    missing = sorted(set(cpu) - set(cuda))
    assert not missing, f"ops with a CPU kernel but no CUDA kernel: {missing}"


def test_every_op_has_a_cuda_source():
    """Without a CUDA build (here, CI's CPU leg) the test above skips: each op that has a CPU
    kernel is at least registered by a CUDA source that setup.py builds (csrc/cuda/*.cu)."""
    import glob
    import re

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    registered = set()
    for path in glob.glob(os.path.join(root, "csrc", "cuda", "*.cu")):
        with open(path) as f:  # a .cu registers its ops only in its PYLOSSES_CUDA_IMPL block
            registered |= {f"pylosses::{name}" for name in re.findall(r'm\.impl\("(\w+)"', f.read())}
    cpu = _ops_with_kernel("CPU")
    assert cpu and registered
    assert not sorted(set(cpu) - registered), f"ops without a CUDA source: {sorted(set(cpu) - registered)}"
