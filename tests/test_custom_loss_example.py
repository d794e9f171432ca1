"""The worked example of docs/custom-fused-loss.md (examples/custom_loss.py) is real code: its
Triton kernel (here in Triton's interpreter, on CPU tensors, unless there is a GPU) matches the
tutorial's plain PyTorch form in value and both gradients, its op passes opcheck, and
torch.compile(fullgraph=True) traces it."""

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples"))
custom_loss = pytest.importorskip("custom_loss")  # needs Triton

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", [(10, 1), (3, 5, 7), (5000,), (1,)])
def test_matches_the_plain_form(shape, dtype):
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(shape, generator=g, dtype=dtype).to(DEVICE).requires_grad_()
    target = torch.randn(shape, generator=g, dtype=dtype).to(DEVICE).requires_grad_()
    grad_out = torch.tensor(0.75, device=DEVICE)
    loss = custom_loss.ParamMSELoss(p1=0.5, p2=-0.25)(pred, target)
    got = torch.autograd.grad(loss, (pred, target), grad_out.to(loss.dtype))
    p64, t64 = pred.detach().double().requires_grad_(), target.detach().double().requires_grad_()
    want_loss = custom_loss.param_mse_reference(p64, t64, 0.5, -0.25)
    want = torch.autograd.grad(want_loss, (p64, t64), grad_out.double())
    tol = {torch.float32: 1e-5, torch.float64: 1e-5, torch.bfloat16: 2e-2}[dtype]
    assert loss.dtype == dtype
    torch.testing.assert_close(loss.double(), want_loss, rtol=tol, atol=tol)
    for a, b in zip(got, want):
        assert a.dtype == dtype
        torch.testing.assert_close(a.double(), b, rtol=tol, atol=tol * 1e-2)


def test_opcheck():
    pred = torch.randn(2, 300, device=DEVICE, requires_grad=True)
    target = torch.randn(2, 300, device=DEVICE)
    torch.library.opcheck(custom_loss.param_mse_fwd, (pred, target, 0.5, 0.25, True))


def test_fullgraph_compile():
    pred = torch.randn(64, device=DEVICE, requires_grad=True)
    target = torch.randn(64, device=DEVICE)
    eager = custom_loss.param_mse(pred, target, 0.3, 0.2)
    compiled = torch.compile(custom_loss.param_mse, fullgraph=True)(pred, target, 0.3, 0.2)
    torch.testing.assert_close(compiled, eager)
    (g_eager,) = torch.autograd.grad(eager, pred)
    (g_compiled,) = torch.autograd.grad(compiled, pred)
    torch.testing.assert_close(g_compiled, g_eager)


def test_bad_shapes_are_a_clear_error():
    with pytest.raises(ValueError, match="same shape"):
        custom_loss.param_mse(torch.zeros(3), torch.zeros(4))
