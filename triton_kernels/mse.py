"""MSE loss in Triton: one pass that reads input and target and writes the loss (per element for
reduction="none", else one partial sum a program) and, when asked, the gradient."""

import torch
import triton
import triton.language as tl

from pylosses._dtypes import saved_grad_dtype

from .common import acc_dtype, acc_torch_dtype, launch_device, sum_groups, to_element

BLOCK = 4096  # elements a program (half for float64), 16 (8) a thread: within 64 registers, so
NUM_WARPS = 8  # that half of an SM's warps fit; Hopper tuning is issue 3's GPU part


@triton.jit
def _mse_block(x_ptr, t_ptr, loss_ptr, grad_ptr, partial_ptr, offs, n, grad_scale,
               WRITE_LOSS: tl.constexpr, WRITE_GRAD: tl.constexpr, ACC: tl.constexpr, MASKED: tl.constexpr):
    """One block; a full one (MASKED false) has no mask, so its loads and stores are vectors
    whatever n is."""
    mask = offs < n if MASKED else None
    x = tl.load(x_ptr + offs, mask=mask, other=0.0 if MASKED else None).to(ACC)
    t = tl.load(t_ptr + offs, mask=mask, other=0.0 if MASKED else None).to(ACC)
    d = x - t
    if WRITE_LOSS:
        tl.store(loss_ptr + offs, to_element(d * d, loss_ptr), mask=mask)
    else:
        tl.store(partial_ptr + tl.program_id(0), tl.sum(d * d, axis=0))
    if WRITE_GRAD:
        tl.store(grad_ptr + offs, to_element(2.0 * d * grad_scale, grad_ptr), mask=mask)


@triton.jit
def mse_fwd_kernel(x_ptr, t_ptr, loss_ptr, grad_ptr, partial_ptr, n: tl.int64, grad_scale: tl.float64,
                   WRITE_LOSS: tl.constexpr, WRITE_GRAD: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    grad_scale = tl.full([], grad_scale, ACC)  # float64 in, rounded once for a float32 launch
    start = tl.program_id(0).to(tl.int64) * BLOCK
    offs = start + tl.arange(0, BLOCK)
    if start + BLOCK <= n:
        _mse_block(x_ptr, t_ptr, loss_ptr, grad_ptr, partial_ptr, offs, n, grad_scale, WRITE_LOSS, WRITE_GRAD, ACC,
                   MASKED=False)
    else:
        _mse_block(x_ptr, t_ptr, loss_ptr, grad_ptr, partial_ptr, offs, n, grad_scale, WRITE_LOSS, WRITE_GRAD, ACC,
                   MASKED=True)


def mse_loss_fwd(input: torch.Tensor, target: torch.Tensor, reduction: int, compute_grad: bool):
    """(loss, grad) as the op pylosses::mse_loss_fwd: grad is d loss / d input for grad_output = 1."""
    x, t = input.contiguous(), target.contiguous()
    n = x.numel()
    result = torch.promote_types(x.dtype, t.dtype)
    # one saved gradient serves input and target, in their common dtype
    grad = torch.empty(x.shape if compute_grad else (0,), dtype=saved_grad_dtype(result), device=x.device)
    acc = acc_torch_dtype(x.dtype, t.dtype)
    block = BLOCK // 2 if acc == torch.float64 else BLOCK
    programs = triton.cdiv(n, block)
    loss = torch.empty(x.shape, dtype=result, device=x.device) if reduction == 0 else None
    partials = torch.empty((programs, 1), dtype=acc, device=x.device)
    grad_scale = 1.0 / n if reduction == 1 and n else 1.0
    if n:
        with launch_device(x):
            mse_fwd_kernel[(programs,)](x, t, loss if loss is not None else partials,
                                        grad if compute_grad else partials, partials, n, grad_scale,
                                        WRITE_LOSS=reduction == 0, WRITE_GRAD=compute_grad,
                                        ACC=acc_dtype(x.dtype, t.dtype), BLOCK=block, num_warps=NUM_WARPS)
    if loss is not None:
        return loss, grad
    total = sum_groups(partials, 1)[0, 0]
    if reduction == 1:
        total = total / n if n else torch.full((), float("nan"), dtype=acc, device=x.device)
    return total.to(result), grad
