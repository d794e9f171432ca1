"""Run by tests/test_install.py inside a fresh virtual environment into which a wheel of pylosses
was installed, from a folder outside the checkout: what a user of that wheel gets.

    python install_smoke.py pure|full

pure: no extension; the triton backend (Triton's interpreter, on CPU tensors) with opcheck and a
fullgraph compile, and backend="auto" falling back to the reference with a notice that says how
to build the extension. full: the native backend too, and "auto" picks it.
"""

import os
import subprocess
import sys
import warnings

import torch

import pylosses
from pylosses import _ops, functional

mode = sys.argv[1]
assert os.environ.get("TRITON_INTERPRET") == "1"
here = os.path.dirname(os.path.abspath(pylosses.__file__))
assert here.startswith(os.path.realpath(sys.prefix)) or here.startswith(sys.prefix), (here, sys.prefix)
assert (_ops.EXTENSION_ERROR is None) == (mode == "full"), _ops.EXTENSION_ERROR
assert _ops.TRITON_ERROR is None, _ops.TRITON_ERROR

backends = pylosses.available_backends("cpu")
assert "triton" in backends and ("native" in backends) == (mode == "full"), backends
# on CUDA tensors, auto takes the extension where it is built with CUDA kernels, else Triton
cuda_native = mode == "full" and torch._C._dispatch_has_kernel_for_dispatch_key("pylosses::seg_loss_fwd", "CUDA")
assert functional._auto_backend("cuda") == ("native" if cuda_native else "triton")

g = torch.Generator().manual_seed(0)
x = torch.rand(2, 1, 5, 7, generator=g, dtype=torch.float64).clamp(0.05, 0.95).requires_grad_()
t = torch.rand(2, 1, 5, 7, generator=g, dtype=torch.float64)
y = torch.rand(2, 1, 5, 7, generator=g, dtype=torch.float64)


def loss_and_grad(backend):
    x.grad = None
    loss = pylosses.segmentation_loss(x, t, alpha=0.7, beta=0.3, backend=backend) + pylosses.mse_loss(x, y, backend=backend)
    loss.backward()
    return loss.detach(), x.grad.clone()


want = loss_and_grad("reference")
run = ["triton", "auto"] + (["native"] if mode == "full" else [])
for backend in run:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = loss_and_grad(backend)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    notices = [str(w.message) for w in caught if "backend='auto'" in str(w.message)]
    if backend == "auto" and mode == "pure":  # the fallback says why and how to get the extension
        assert notices and "pip install --no-build-isolation" in notices[0], notices
    else:
        assert not notices, notices

args = (x.detach(), t, 0.7, 0.3, 2, False, 1, True, False)
torch.library.opcheck(torch.ops.pylosses.triton_seg_loss_fwd.default, args)
torch.library.opcheck(torch.ops.pylosses.triton_mse_loss_fwd.default, (x.detach(), y, 1, True))


@torch.compile(fullgraph=True)
def step(x, t):
    return pylosses.segmentation_loss(x, t, backend="triton")


x.grad = None
step(x, t).backward()
torch.testing.assert_close(x.grad, torch.autograd.grad(pylosses.reference.segmentation_loss(x, t), x)[0])

report = subprocess.run([sys.executable, "-m", "pylosses"], capture_output=True, text=True, check=True).stdout
print(report)
assert ("extension pylosses._C: not built" in report) == (mode == "pure"), report
assert f"pylosses {pylosses.__version__}" in report
print(f"install smoke test ({mode}): ok")
