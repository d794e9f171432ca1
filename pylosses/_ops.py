"""The ops of pylosses._C: fake kernels (for torch.compile and opcheck) and autograd.

Each loss's forward op returns the loss and, when asked, its gradients before the reduction's
scale and grad_output are applied (DESIGN §3: the forward pass writes the gradient); the
backward of every loss is the op loss_backward, which applies grad_output and the scale.
"""

import torch
from torch import Tensor

try:
    from . import _C  # noqa: F401  (loading it registers torch.ops.pylosses.*)

    EXTENSION_ERROR = None
except ImportError as error:  # not built: the native backend is unavailable
    EXTENSION_ERROR = error

REDUCTIONS = {"none": 0, "mean": 1, "sum": 2}
_NONE, _MEAN, _SUM = 0, 1, 2


def saved_grad_dtype(dtype: torch.dtype) -> torch.dtype:
    """float16 cannot hold an unscaled gradient (BCE's grows as 1/p): it is saved in float32."""
    return torch.float32 if dtype == torch.float16 else dtype


def _grad_like(tensor: Tensor, wanted: bool, dtype: torch.dtype) -> Tensor:
    shape = tensor.shape if wanted else (0,)
    return tensor.new_empty(shape, dtype=saved_grad_dtype(dtype))


def _scale(reduction: int, elements) -> float:
    """The reduction's factor on the saved gradient: 1 for sum, else 1 / elements (the elements
    that one loss value averages: all of them, a sample's, or one for MSE's "none")."""
    if reduction == _SUM:
        return 1.0
    return 1.0 / max(elements, 1)


def _apply(grad_output: Tensor, saved: Tensor, scale: float, dtype: torch.dtype, shape) -> Tensor:
    if saved.numel() == 0 and torch.Size(shape).numel() != 0:
        raise RuntimeError("pylosses: backward needs the gradient that the forward op was asked not to compute")
    return torch.ops.pylosses.loss_backward(grad_output, saved, scale, dtype)


def mse_loss(input: Tensor, target: Tensor, reduction: str) -> Tensor:
    compute_grad = torch.is_grad_enabled() and (input.requires_grad or target.requires_grad)
    loss, _ = torch.ops.pylosses.mse_loss_fwd(input, target, REDUCTIONS[reduction], compute_grad)
    return loss


def segmentation_loss(
    input: Tensor, target: Tensor, alpha: float, beta: float, from_logits: bool, spatial_dims: int, reduction: str
) -> Tensor:
    grad_enabled = torch.is_grad_enabled()
    loss, _, _ = torch.ops.pylosses.seg_loss_fwd(
        input, target, float(alpha), float(beta), spatial_dims, from_logits, REDUCTIONS[reduction],
        grad_enabled and input.requires_grad, grad_enabled and target.requires_grad,
    )
    return loss


if EXTENSION_ERROR is None:

    @torch.library.register_fake("pylosses::mse_loss_fwd")
    def _mse_loss_fwd_fake(input, target, reduction, compute_grad):
        loss_shape = input.shape if reduction == _NONE else ()
        dtype = torch.promote_types(input.dtype, target.dtype)
        # one saved gradient serves input and target, in their common dtype
        return input.new_empty(loss_shape, dtype=dtype), _grad_like(input, compute_grad, dtype)

    @torch.library.register_fake("pylosses::seg_loss_fwd")
    def _seg_loss_fwd_fake(input, target, alpha, beta, spatial_dims, from_logits, reduction, grad_input, grad_target):
        loss_shape = input.shape[:1] if reduction == _NONE else ()
        loss = input.new_empty(loss_shape, dtype=torch.promote_types(input.dtype, target.dtype))
        return loss, _grad_like(input, grad_input, input.dtype), _grad_like(target, grad_target, target.dtype)

    @torch.library.register_fake("pylosses::loss_backward")
    def _loss_backward_fake(grad_output, saved_grad, scale, dtype):
        return saved_grad.new_empty(saved_grad.shape, dtype=dtype)

    def _mse_setup_context(ctx, inputs, output):
        input, target, reduction, _ = inputs
        ctx.save_for_backward(output[1])
        ctx.mark_non_differentiable(output[1])
        ctx.scale = _scale(reduction, 1 if reduction == _NONE else input.numel())
        ctx.dtypes = (input.dtype, target.dtype)
        ctx.shape = input.shape

    def _mse_backward(ctx, grad_loss, _unused):
        (saved,) = ctx.saved_tensors
        grad_input = grad_target = None
        if ctx.needs_input_grad[0]:
            grad_input = _apply(grad_loss, saved, ctx.scale, ctx.dtypes[0], ctx.shape)
        if ctx.needs_input_grad[1]:  # d/dt (x - t)^2 = -d/dx
            grad_target = _apply(grad_loss, saved, -ctx.scale, ctx.dtypes[1], ctx.shape)
        return grad_input, grad_target, None, None

    def _seg_setup_context(ctx, inputs, output):
        input, target, _, _, _, _, reduction, _, _ = inputs
        ctx.save_for_backward(output[1], output[2])
        ctx.mark_non_differentiable(output[1], output[2])
        per_sample = reduction == _NONE and input.shape[0] > 0
        ctx.scale = _scale(reduction, input.numel() // input.shape[0] if per_sample else input.numel())
        ctx.dtypes = (input.dtype, target.dtype)
        ctx.shape = input.shape

    def _seg_backward(ctx, grad_loss, _unused_input, _unused_target):
        saved_input, saved_target = ctx.saved_tensors
        grad_input = grad_target = None
        if ctx.needs_input_grad[0]:
            grad_input = _apply(grad_loss, saved_input, ctx.scale, ctx.dtypes[0], ctx.shape)
        if ctx.needs_input_grad[1]:
            grad_target = _apply(grad_loss, saved_target, ctx.scale, ctx.dtypes[1], ctx.shape)
        return (grad_input, grad_target) + (None,) * 7

    torch.library.register_autograd("pylosses::mse_loss_fwd", _mse_backward, setup_context=_mse_setup_context)
    torch.library.register_autograd("pylosses::seg_loss_fwd", _seg_backward, setup_context=_seg_setup_context)
