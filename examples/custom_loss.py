"""A fused loss of your own, written as you would in your project: the worked case of
docs/custom-fused-loss.md.

The seed tutorial's parameterised loss,

    loss = mean((pred - target) ** 2) + p1 * mean(pred) + p2 * mean(target),

takes five PyTorch ops forward and as many backward, with full-size temporaries. Here it is one
Triton kernel that reads pred and target once and writes both gradients as it goes, wrapped as a
torch.library custom op (with a fake kernel, so torch.compile traces it) and given autograd.

Run it on a GPU, or anywhere under Triton's interpreter:

    TRITON_INTERPRET=1 python examples/custom_loss.py
"""

from typing import Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor, nn

BLOCK = 1024


# 1. The plain PyTorch form: the ground truth ------------------------------------------------

def param_mse_reference(pred: Tensor, target: Tensor, p1: float, p2: float) -> Tensor:
    return torch.mean((pred - target) ** 2) + p1 * torch.mean(pred) + p2 * torch.mean(target)


# 2. The kernel: loss terms and gradients in one pass ------------------------------------------

@triton.jit
def _param_mse_kernel(pred_ptr, target_ptr, grad_pred_ptr, grad_target_ptr, partial_ptr, n, p1, p2, inv_n,
                      GRAD: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)  # int64: tensors past 2**31 elements
    mask = offs < n
    x = tl.load(pred_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    t = tl.load(target_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    d = x - t
    # this program's partial sums of (x - t)^2, x and t: summed in a fixed order afterwards
    tl.store(partial_ptr + pid * 3 + 0, tl.sum(d * d, axis=0))
    tl.store(partial_ptr + pid * 3 + 1, tl.sum(x, axis=0))
    tl.store(partial_ptr + pid * 3 + 2, tl.sum(t, axis=0))
    if GRAD:  # d loss / d pred and d loss / d target for grad_output = 1
        tl.store(grad_pred_ptr + offs, ((2.0 * d + p1) * inv_n).to(grad_pred_ptr.dtype.element_ty), mask=mask)
        tl.store(grad_target_ptr + offs, ((p2 - 2.0 * d) * inv_n).to(grad_target_ptr.dtype.element_ty), mask=mask)


# 3. The op, its fake kernel and its autograd ---------------------------------------------------

@torch.library.custom_op("my_losses::param_mse_fwd", mutates_args=())
def param_mse_fwd(pred: Tensor, target: Tensor, p1: float, p2: float, compute_grad: bool) -> Tuple[Tensor, Tensor, Tensor]:
    """(loss, grad_pred, grad_target); the gradients for grad_output = 1, empty unless asked for."""
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}")
    pred, target = pred.contiguous(), target.contiguous()  # the kernel indexes flat memory
    n = pred.numel()
    grad_pred = torch.empty_like(pred) if compute_grad else pred.new_empty(0)
    grad_target = torch.empty_like(target) if compute_grad else target.new_empty(0)
    programs = triton.cdiv(n, BLOCK)
    partials = torch.empty((programs, 3), dtype=torch.float32, device=pred.device)
    if n:
        _param_mse_kernel[(programs,)](pred, target, grad_pred if compute_grad else partials,
                                       grad_target if compute_grad else partials, partials, n, p1, p2, 1.0 / n,
                                       GRAD=compute_grad, BLOCK=BLOCK)
    sums = partials.sum(dim=0)  # on the device: no .item(), no host sync
    loss = (sums[0] + p1 * sums[1] + p2 * sums[2]) / n  # n = 0: NaN, as torch.mean
    return loss.to(torch.promote_types(pred.dtype, target.dtype)), grad_pred, grad_target


@param_mse_fwd.register_fake
def _(pred, target, p1, p2, compute_grad):
    loss = pred.new_empty((), dtype=torch.promote_types(pred.dtype, target.dtype))
    grad_shape = pred.shape if compute_grad else (0,)
    return loss, pred.new_empty(grad_shape), target.new_empty(grad_shape)


def _setup_context(ctx, inputs, output):
    _, grad_pred, grad_target = output
    ctx.save_for_backward(grad_pred, grad_target)


def _backward(ctx, grad_loss, _grad_pred, _grad_target):
    grad_pred, grad_target = ctx.saved_tensors
    # grad_loss is a 0-dim tensor on the device: multiplying by it needs no host sync
    return grad_pred * grad_loss, grad_target * grad_loss, None, None, None


param_mse_fwd.register_autograd(_backward, setup_context=_setup_context)


# 4. What your training code calls -------------------------------------------------------------

def param_mse(pred: Tensor, target: Tensor, p1: float = 0.1, p2: float = 0.1) -> Tensor:
    compute_grad = torch.is_grad_enabled() and (pred.requires_grad or target.requires_grad)
    loss, _, _ = param_mse_fwd(pred, target, float(p1), float(p2), compute_grad)
    return loss


class ParamMSELoss(nn.Module):
    """The tutorial's CustomLoss, fused."""

    def __init__(self, p1: float = 0.1, p2: float = 0.1):
        super().__init__()
        self.p1, self.p2 = p1, p2

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        return param_mse(pred, target, self.p1, self.p2)


if __name__ == "__main__":
    device = "cuda" if torch.cuda.is_available() else "cpu"
    pred = torch.randn(10, 1, device=device, requires_grad=True)
    target = torch.randn(10, 1, device=device)
    loss = ParamMSELoss(p1=0.5, p2=0.25)(pred, target)
    loss.backward()
    want = param_mse_reference(pred.detach().requires_grad_(), target, 0.5, 0.25)
    print(f"fused: {loss.item():.6f}   plain PyTorch: {want.item():.6f}")
