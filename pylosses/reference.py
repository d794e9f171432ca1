"""The pure-PyTorch losses: the ground truth that every kernel is checked against.

They follow DESIGN §1 and the README's "Semantics": arithmetic in float32 (float64 when an
operand is float64), the result in torch's result dtype, BCE and its gradients exactly as
torch.nn gives them. They do not validate their arguments (pylosses.functional does that for
every backend), only the targets' values, as torch's losses do and beyond (README, "Semantics"). `scripted` and `compiled` give their torch.jit.script and torch.compile variants.
"""

from typing import Callable, Dict

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["mse_loss", "segmentation_loss", "scripted", "compiled"]


# The targets' errors, as the kernels give them (csrc/seg_loss_math.h has the same texts): torch's
# own for a float target outside [0, 1] with probabilities (nn.BCELoss checks it), and for a
# uint8 mask that holds anything but 0 and 1, in either form.
def _mask_message() -> str:  # a function: torch.jit.script cannot read a global string
    return "target masks (uint8 or bool) must hold only 0 and 1; for a 0/255 mask, divide it by 255 or compare it with 0"


TARGET_RANGE_MESSAGE = "all elements of target should be between 0 and 1"
MASK_MESSAGE = _mask_message()


def check_mask(target: Tensor) -> None:
    """Raises the mask error for a uint8 CPU target that holds anything but 0 and 1."""
    if target.dtype == torch.uint8 and target.device.type == "cpu" and bool((target > 1).any()):
        raise RuntimeError(_mask_message())


def _compute_dtype(input: Tensor, target: Tensor) -> torch.dtype:
    if input.dtype == torch.float64 or target.dtype == torch.float64:
        return torch.float64
    return torch.float32


def _reduce(value: Tensor, reduction: str) -> Tensor:
    """mean or sum of everything, or for "none" the mean of each sample (dim 0)."""
    if reduction == "mean":
        return value.mean()
    if reduction == "sum":
        return value.sum()
    return value.flatten(1).mean(1)


def mse_loss(input: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
    """nn.MSELoss, computed in float32 (float64 for float64)."""
    dtype = _compute_dtype(input, target)
    loss = F.mse_loss(input.to(dtype), target.to(dtype), reduction=reduction)
    return loss.to(torch.promote_types(input.dtype, target.dtype))


def segmentation_loss(
    input: Tensor,
    target: Tensor,
    alpha: float = 0.7,
    beta: float = 0.3,
    from_logits: bool = False,
    spatial_dims: int = 2,
    reduction: str = "mean",
) -> Tensor:
    """alpha * BCE + beta * total variation of the probabilities over the last spatial_dims axes.

    "mean": alpha * mean(BCE) + beta * sum over spatial axes of mean |p[k+1] - p[k]|;
    "sum": the same with sums; "none": the "mean" formula for each sample (dim 0).
    An axis of length 1 has no differences and contributes 0.
    """
    dtype = _compute_dtype(input, target)
    x = input.to(dtype)
    t = target.to(dtype)
    # A uint8 mask must hold 0 and 1 (a 0/255 mask would give a negative loss): on the CPU an
    # error; elsewhere, to need no host sync, the loss is NaN, as the kernels make it. Under
    # torch.compile an error would break the graph, and under torch.jit.script it would not be a
    # RuntimeError: pylosses.functional checks a mask before it calls those variants, and a
    # compiled loss is NaN (also for a float target outside [0, 1] with probabilities, whose
    # check in nn.BCELoss inductor leaves out).
    compiling = False
    if not torch.jit.is_scripting():
        compiling = torch.compiler.is_compiling()
        if not compiling:
            check_mask(target)
    if from_logits:
        p = torch.sigmoid(x)
        bce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    else:
        p = x
        bce = F.binary_cross_entropy(x, t, reduction="none")
    loss = alpha * _reduce(bce, reduction)
    for axis in range(x.dim() - spatial_dims, x.dim()):
        n = x.size(axis)
        if n > 1:
            diff = (p.narrow(axis, 1, n - 1) - p.narrow(axis, 0, n - 1)).abs()
            loss = loss + beta * _reduce(diff, reduction)
    bad = torch.zeros((), dtype=torch.bool, device=loss.device)
    if target.dtype == torch.uint8 and (compiling or target.device.type != "cpu"):
        bad = (target > 1).any()
    if compiling and not from_logits and target.is_floating_point():
        bad = bad | ~((target >= 0) & (target <= 1)).all()
    loss = torch.where(bad, torch.full_like(loss, float("nan")), loss)
    return loss.to(torch.promote_types(input.dtype, target.dtype))


_LOSSES: Dict[str, Callable] = {"mse_loss": mse_loss, "segmentation_loss": segmentation_loss}
_scripted: Dict[str, Callable] = {}
_compiled: Dict[str, Callable] = {}


def scripted(name: str) -> Callable:
    """The torch.jit.script variant of the reference loss `name`, made once."""
    if name not in _scripted:
        _scripted[name] = torch.jit.script(_LOSSES[name])
    return _scripted[name]


def compiled(name: str) -> Callable:
    """The torch.compile variant of the reference loss `name`, made once (compiled on first call)."""
    if name not in _compiled:
        _compiled[name] = torch.compile(_LOSSES[name])
    return _compiled[name]
