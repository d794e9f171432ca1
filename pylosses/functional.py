"""The functional API and backend selection; it mirrors torch.nn.functional.

Every function validates its arguments once, for every backend, and raises a ValueError or
TypeError that names the argument and the value. Under torch.autocast the loss runs with
autocast off on the tensors as given (the kernels compute in float32 anyway) and returns a
float32 loss, as torch's own losses do under autocast.
"""

import functools
import math
import numbers
import os
import sys
import warnings
from typing import Callable, List, Optional, Sequence, Union

import torch
from torch import Tensor
from torch.autograd import forward_ad

from . import _ops, reference

__all__ = ["mse_loss", "segmentation_loss", "dice_loss", "tversky_loss", "generalized_dice_loss", "dice_bce_loss",
           "dice_ce_loss", "cross_entropy",
           "available_backends",
           "set_input_checks", "input_checks_enabled"]

BACKENDS = ("auto", "native", "triton", "reference", "jit", "compile")
REDUCTIONS = tuple(_ops.REDUCTIONS)  # "none", "mean", "sum"
_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_SEG_TARGETS = _FLOATS + (torch.bool, torch.uint8)
_CLASS_TARGETS = (torch.int64, torch.int32, torch.uint8)  # class-index maps

# backend="auto": the fastest backends for each device type, fastest first, as the benchmark
# results (benchmarks/results/) show them. The first available one is used; anything else
# falls back to "reference" with a one-time warning that says what is missing.
FASTEST = {
    "cpu": ("native",),
    "meta": ("native", "triton"),  # shapes and dtypes from the ops' fake kernels, as on every device
    # the CUDA kernels first, then Triton (a pure-Python install has it): on the H200 (GPU_MEASUREMENT)
    # MSE and the Dice loss ran as fast on either (within 6%, float32, 64M elements)
    "cuda": ("native", "triton"),
}
# Where one loss's order differs from its device's: on the H200 the Triton segmentation loss took
# 0.210 ms forward and 0.405 ms forward+backward where the CUDA kernel took 0.387 and 0.601
# (float32, 64M elements; the CUDA kernel's per-element instruction count is issue 13's).
FASTEST_FOR = {
    ("cuda", "segmentation_loss"): ("triton", "native"),
}
# The benchmark results that FASTEST's and FASTEST_FOR's GPU orders come from (python -m pylosses
# reports it): make device-check on an H200, torch 2.11, Triton 3.6.
GPU_MEASUREMENT = "benchmarks/results/nvidia-h200-2026-11-30/2-53fd57e"

# how to get what a backend lacks, for the messages that say it is missing
HOW_TO_BUILD = ("build it from a source checkout: pip install --no-build-isolation . (with torch, a C++ compiler "
                "and, for CUDA tensors, nvcc), or make build")
HOW_TO_GET_TRITON = "pip install triton (it comes with torch on Linux)"

_warned = set()


def set_input_checks(enabled: bool) -> None:
    """Turn on (or off) the checking mode for CUDA tensors: probabilities outside [0, 1] raise
    instead of giving NaN (it costs a host sync). On the CPU they always raise."""
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled must be a bool, got {type(enabled).__name__} {enabled!r}")
    _ops.input_checks = enabled


def input_checks_enabled() -> bool:
    return _ops.input_checks


def _native_reason(device: torch.device) -> str:
    """Why the native backend can't run on `device`, or "" when it can."""
    if _ops.EXTENSION_ERROR is not None:
        return f"the compiled extension pylosses._C is not there ({_ops.EXTENSION_ERROR}); {HOW_TO_BUILD}"
    if device.type in ("cpu", "meta"):  # meta: the fake kernels give shapes and dtypes
        return ""
    key = {"cuda": "CUDA"}.get(device.type)
    if key in _ops.NATIVE_KEYS:
        return ""
    return f"pylosses._C was built without kernels for {device.type} tensors; to build them, {HOW_TO_BUILD}"


def _unavailable_reason(backend: str, device: torch.device) -> str:
    if backend == "native":
        return _native_reason(device)
    if backend == "triton":
        if _ops.TRITON_ERROR is not None:
            return f"the Triton kernels could not be loaded ({_ops.TRITON_ERROR}); {HOW_TO_GET_TRITON}"
        if device.type in ("cuda", "meta") or (device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"):
            return ""
        return f"Triton runs on cuda tensors (on cpu tensors only under TRITON_INTERPRET=1, for tests), not {device.type}"
    return ""  # reference, jit and compile run wherever torch does


def available_backends(device: Union[str, torch.device] = "cpu") -> List[str]:
    """The backends that can run on `device`, fastest first, e.g. ["native", "compile", "jit", "reference"]."""
    device = torch.device(device)
    order = ("native", "triton", "compile", "jit", "reference")
    return [b for b in order if not _unavailable_reason(b, device)]


def _derivative_transform(tensors: Sequence) -> Optional[str]:
    """What asks of these tensors a derivative that the fused kernels cannot give, or None: a
    dual tensor of forward-mode AD, or a tensor under torch.func's grad, jvp, jacrev or jacfwd.
    The ops' autograd formulas (torch.library.register_autograd) are reverse mode only: torch
    drops a tangent through them without a word (a derivative of 0) and fails torch.func.grad
    with an error about autograd.Function. (Not while torch.compile traces: dynamo handles it.)"""
    if torch.compiler.is_compiling():
        return None
    for t in tensors:
        if not isinstance(t, Tensor):
            continue
        if torch._C._functorch.is_gradtrackingtensor(t):
            return "torch.func's grad, jvp, jacrev and jacfwd"
        if forward_ad._current_level >= 0 and forward_ad.unpack_dual(t).tangent is not None:
            return "forward-mode AD (torch.autograd.forward_ad)"
    return None


def _pick_backend(backend: str, device: torch.device, numel: int = 1, loss: Optional[str] = None,
                  tensors: Sequence = ()) -> str:
    """The backend that runs a loss of the tensors (its input first): backend="auto" takes the
    reference under forward-mode AD or torch.func's derivative transforms, which the kernels of
    native and triton do not support (those backends raise there)."""
    transform = _derivative_transform(tensors)
    if transform and backend in ("native", "triton"):
        raise RuntimeError(f"pylosses: backend={backend!r} does not support {transform}: its fused kernels give "
                           "first derivatives by backward() only; use backend='reference' (which 'auto' takes there)")
    if transform and backend == "auto":
        return "reference"
    if backend == "compile" and (numel == 0 or device.type == "meta"):
        # inductor fails on empty tensors (a division by zero in mean) and, once it compiles
        # with dynamic shapes, on meta tensors; the same reference, run eagerly, gives the result
        return "reference"
    if backend != "auto":
        reason = _unavailable_reason(backend, device)
        if reason:
            raise RuntimeError(f"backend={backend!r} is not available for {device.type} tensors: {reason}")
        return backend
    choice = _auto_backend(device, loss)
    if choice == "reference" and device.type not in _warned:
        _warned.add(device.type)
        warnings.warn(f"pylosses: backend='auto' uses 'reference' for {device.type} tensors "
                      f"({_auto_fallback_reason(device)})", stacklevel=3)
    return choice


def _auto_backend(device: Union[str, torch.device], loss: Optional[str] = None) -> str:
    """What backend="auto" runs on `device` (for `loss`, a function's name here): the first
    available of FASTEST_FOR's order for the two, else of FASTEST's for the device, else "reference"."""
    device = torch.device(device)
    for candidate in FASTEST_FOR.get((device.type, loss), FASTEST.get(device.type, ())):
        if not _unavailable_reason(candidate, device):
            return candidate
    return "reference"


def _auto_fallback_reason(device: Union[str, torch.device]) -> str:
    """Why backend="auto" falls back to the reference on `device`: what each faster one lacks."""
    device = torch.device(device)
    preferred = FASTEST.get(device.type, ())
    return "; ".join(f"{b}: {_unavailable_reason(b, device)}" for b in preferred) or "no kernels for this device"


# checks -----------------------------------------------------------------------------------


def _check_choice(name: str, value, choices) -> None:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")


def _check_weight(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    # comparisons, not math.isfinite: torch.compile(dynamic=True) traces a module's float
    # attributes as symbolic floats, which math.isfinite cannot take (NaN fails both)
    if not -sys.float_info.max <= value <= sys.float_info.max:  # (also an int too large for a float)
        raise ValueError(f"{name} must be finite, got {value!r}")


def _check_options(reduction, backend) -> None:
    _check_choice("reduction", reduction, REDUCTIONS)
    _check_choice("backend", backend, BACKENDS)


def _check_seg_options(alpha, beta, from_logits, spatial_dims) -> None:
    _check_weight("alpha", alpha)
    _check_weight("beta", beta)
    if not isinstance(from_logits, bool):
        raise TypeError(f"from_logits must be a bool, got {type(from_logits).__name__} {from_logits!r}")
    if isinstance(spatial_dims, bool) or not isinstance(spatial_dims, int):
        raise TypeError(f"spatial_dims must be an int, got {type(spatial_dims).__name__} {spatial_dims!r}")
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")


def _check_label_smoothing(value) -> None:
    _check_weight("label_smoothing", value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"label_smoothing must be between 0.0 and 1.0, got {value}")


def _check_combined(name: str, reduction: str, **lambdas) -> None:
    """A sum of losses: reduction "mean" or "sum" (MONAI's DiceCELoss has no "none"), each
    lambda_* finite and no less than 0."""
    if reduction == "none":
        raise ValueError(f"reduction must be 'mean' or 'sum' for {name} (as for MONAI's DiceCELoss), got 'none'")
    for key, value in lambdas.items():
        _check_weight(key, value)
        if value < 0:
            raise ValueError(f"{key} must be no less than 0, got {value}")


def _check_tensors(input, target, target_dtypes) -> None:
    for name, tensor, dtypes in (("input", input, _FLOATS), ("target", target, target_dtypes)):
        if not isinstance(tensor, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
        if tensor.dtype not in dtypes:
            names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
            raise TypeError(f"{name} must have dtype {names}; got {tensor.dtype}")
        if tensor.layout != torch.strided:
            raise TypeError(f"{name} must be a dense (strided) tensor, got layout {tensor.layout}")
    if input.shape != target.shape:
        raise ValueError(
            f"input and target must have the same shape, got input {tuple(input.shape)} and target {tuple(target.shape)}"
        )
    if input.device != target.device:
        raise ValueError(f"input and target must be on the same device, got input on {input.device} and target on {target.device}")


def _run(device: torch.device, fn: Callable, *args) -> Tensor:
    # meta tensors (shape inference) have no autocast, and asking about it raises; the test is
    # on the device type, not torch.amp.is_autocast_available, which torch 2.11's dynamo cannot trace
    if device.type == "meta" or not torch.is_autocast_enabled(device.type):
        return fn(*args)
    with torch.autocast(device.type, enabled=False):
        loss = fn(*args)
    return loss if loss.dtype == torch.float64 else loss.float()


# losses -----------------------------------------------------------------------------------


def mse_loss(input: Tensor, target: Tensor, reduction: str = "mean", backend: str = "auto") -> Tensor:
    """Mean squared error, as torch.nn.functional.mse_loss but with equal shapes required.

    reduction: "none" | "mean" | "sum"; backend: "auto" | "native" | "triton" | "reference" | "jit" | "compile".
    """
    _check_options(reduction, backend)
    _check_tensors(input, target, _FLOATS)
    chosen = _pick_backend(backend, input.device, input.numel(), tensors=(input, target))
    if chosen in _ops.PREFIX:
        return _run(input.device, functools.partial(_ops.mse_loss, chosen), input, target, reduction)
    return _run(input.device, _reference_variant("mse_loss", chosen), input, target, reduction)


def segmentation_loss(
    input: Tensor,
    target: Tensor,
    alpha: float = 0.7,
    beta: float = 0.3,
    from_logits: bool = False,
    spatial_dims: int = 2,
    reduction: str = "mean",
    backend: str = "auto",
) -> Tensor:
    """alpha * BCE + beta * total variation over the last `spatial_dims` axes (README, "Semantics").

    input: probabilities, or logits with from_logits=True, shaped (N, ..., H, W) or (N, ..., D, H, W);
    target: the same shape, floating point in [0, 1], bool or uint8.
    reduction "none" gives one value per sample (dim 0).
    """
    _check_options(reduction, backend)
    _check_seg_options(alpha, beta, from_logits, spatial_dims)
    _check_tensors(input, target, _SEG_TARGETS)
    if input.dim() <= spatial_dims:
        raise ValueError(
            f"input must have a batch axis and spatial_dims={spatial_dims} spatial axes, "
            f"i.e. at least {spatial_dims + 1} dimensions, got shape {tuple(input.shape)}"
        )
    chosen = _pick_backend(backend, input.device, input.numel(), "segmentation_loss", (input, target))
    if chosen in _ops.PREFIX:
        fn = functools.partial(_ops.segmentation_loss, chosen)
    else:
        if chosen in ("jit", "compile"):  # (their reference leaves it out: see there)
            reference.check_mask(target)
        fn = _reference_variant("segmentation_loss", chosen)
    return _run(input.device, fn, input, target, float(alpha), float(beta), from_logits, spatial_dims, reduction)


def _reference_variant(name: str, backend: str) -> Callable:
    if backend == "jit":
        return reference.scripted(name)
    if backend == "compile":
        return reference.compiled(name)
    return getattr(reference, name)


# region losses ----------------------------------------------------------------------------
#
# MONAI's DiceLoss, TverskyLoss and GeneralizedDiceLoss (monai.losses 1.6): the same arguments
# in the same order, defaults and meaning, plus mask and backend (README, "Region losses").
# The kernels give each (sample, channel)'s sums (op region_sums); reference.*_from_sums turns
# them into the loss on every backend.

def _check_bool(name: str, value) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")


def _check_region_options(to_onehot_y, softmax, other_act, ignore_index, reduction, backend, smooth_nr, smooth_dr,
                          sigmoid=False, **flags) -> str:
    """Checks what every region loss takes; returns reduction as a plain str (MONAI's
    LossReduction members are str enums)."""
    if other_act is not None:
        raise NotImplementedError("other_act is not supported by pylosses: apply the activation to input before the "
                                  "loss, or use sigmoid=True or softmax=True")
    for name, value in (("sigmoid", sigmoid), ("softmax", softmax), ("to_onehot_y", to_onehot_y)):
        _check_bool(name, value)
    if sigmoid and softmax:
        raise ValueError("Incompatible values: more than 1 of [sigmoid=True, softmax=True, other_act is not None].")
    if ignore_index is not None and (isinstance(ignore_index, bool) or not isinstance(ignore_index, int)):
        raise TypeError(f"ignore_index must be an int or None, got {type(ignore_index).__name__} {ignore_index!r}")
    reduction = getattr(reduction, "value", reduction)
    _check_options(reduction, backend)
    _check_weight("smooth_nr", smooth_nr)
    _check_weight("smooth_dr", smooth_dr)
    for name, value in flags.items():
        _check_bool(name, value)
    return reduction


def _check_region_tensors(input, target, mask, label_map: bool = False) -> Optional[Tensor]:
    """input (B, C, spatial...), target of its shape (label_map: a label map, _label_map's), mask
    bool and broadcastable to it: returns the mask as the op takes it, (B, 1, spatial...) or the
    input's shape, or None."""
    if label_map:
        _check_tensors(input, input, _FLOATS)
        if not isinstance(target, Tensor):
            raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
        if target.device != input.device:
            raise ValueError(f"input and target must be on the same device, got input on {input.device} and target "
                             f"on {target.device}")
    else:
        _check_tensors(input, target, _SEG_TARGETS)
    if input.dim() < 3:
        raise ValueError(f"input must be shaped (B, C, spatial...) with at least one spatial axis, "
                         f"got shape {tuple(input.shape)}")
    if mask is None:
        return None
    if not isinstance(mask, Tensor):
        raise TypeError(f"mask must be a bool torch.Tensor or None, got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must have dtype bool (True where a pixel counts), got {mask.dtype}")
    if mask.device != input.device:
        raise ValueError(f"mask must be on the input's device, got mask on {mask.device} and input on {input.device}")
    try:
        torch.broadcast_shapes(mask.shape, input.shape)
    except RuntimeError:
        raise ValueError(f"mask must be broadcastable to the input's shape {tuple(input.shape)}, "
                         f"got {tuple(mask.shape)}") from None
    if mask.dim() > input.dim():
        raise ValueError(f"mask must be broadcastable to the input's shape {tuple(input.shape)} without more "
                         f"dimensions, got {tuple(mask.shape)}")
    mask = mask.view((1,) * (input.dim() - mask.dim()) + tuple(mask.shape))
    channels = 1 if mask.shape[1] == 1 else input.shape[1]
    return mask.expand((input.shape[0], channels) + tuple(input.shape[2:]))


def _foreground_classes(input: Tensor, include_background: bool) -> int:
    if not include_background and input.shape[1] == 1:
        warnings.warn("single channel prediction, `include_background=False` ignored.", stacklevel=4)
    return input.shape[1] - (0 if include_background or input.shape[1] == 1 else 1)


def _class_weight(weight) -> Optional[Tensor]:
    """MONAI's weight argument as a tensor: None, one number for every class, or one a class;
    never negative (checked where it costs no host sync: not for a weight already on a GPU, nor
    while torch.compile traces, where the check would be a data-dependent branch)."""
    if weight is None:
        return None
    if isinstance(weight, (bool, str, bytes)) or not isinstance(weight, (numbers.Real, Sequence, Tensor)):
        raise TypeError(f"weight must be None, a number, a sequence of numbers or a tensor, got {type(weight).__name__}")
    w = torch.as_tensor(weight)
    if not w.is_floating_point():
        w = w.float()
    if w.dim() > 1:
        raise ValueError(f"weight must be a number or one-dimensional, got shape {tuple(w.shape)}")
    if w.device.type == "cpu" and not torch.compiler.is_compiling() and bool((w < 0).any()):
        raise ValueError(f"weight must be no less than 0, got {w.tolist()}")
    return w


def _check_not_differentiable(name: str, weight, loss: str) -> None:
    """torch's rule for its cross-entropy's weight and BCE's pos_weight: they take no gradient, and
    one that asks for it is an error (rather than a gradient silently left out by one backend)."""
    if isinstance(weight, Tensor) and weight.requires_grad and torch.is_grad_enabled():
        raise RuntimeError(f"{name}: {loss} is not differentiable with respect to {name} (torch raises too); "
                           f"pass {name}.detach()")


def _to_device(name: str, weight: Tensor, device: torch.device) -> Tensor:
    """A weight moved to the input's device (as MONAI moves its class weights); one on the meta
    device holds no values to move."""
    if weight.device.type == "meta" and device.type != "meta":
        raise ValueError(f"{name} must hold values for an input on {device}: it is on the meta device")
    return weight.to(device)


def _dice_weight(weight, classes: int, device: torch.device) -> Optional[Tensor]:
    """The class weights for `classes` classes (not counting channel 0 with
    include_background=False); None for one class, which MONAI weights by nothing."""
    w = _class_weight(weight)
    if w is None or classes == 1:
        return None
    if w.dim() == 0:
        w = w.expand(classes)
    elif w.shape[0] != classes:
        raise ValueError(f"weight has {w.shape[0]} values for {classes} classes (with include_background=False, the "
                         f"weight should not include the background class 0)")
    return _to_device("weight", w, device)


def _label_map(input: Tensor, target: Tensor, ignore_index: Optional[int], checked_by_op: bool = False) -> Tensor:
    """A to_onehot_y target, (B, 1, spatial...) or (B, spatial...), as the class indices (B,
    spatial...) of dtype int64, int32 or uint8 (others as MONAI's one_hot takes them: .long()).
    On the CPU a class outside [0, C) that is not ignore_index raises torch's IndexError: here, or
    where checked_by_op, in the op that takes the map (the native CPU softmax_region_sums, whose
    check is one pass in C++; torch's took 8 ms at 4M int64 labels with ignore_index among them).
    Not while torch.compile traces (a data-dependent branch): a label outside [0, C) is then in no
    class's one-hot, as on a GPU without set_input_checks."""
    b, classes, spatial = input.shape[0], input.shape[1], tuple(input.shape[2:])
    if tuple(target.shape) == (b, 1) + spatial:
        labels = target.squeeze(1)
    elif tuple(target.shape) == (b,) + spatial:
        labels = target
    else:
        raise ValueError(f"target must be a label map shaped (B, 1, spatial...) or (B, spatial...) with to_onehot_y="
                         f"True, {(b, 1) + spatial} for input {tuple(input.shape)}; got {tuple(target.shape)}")
    if labels.dtype == torch.bool:
        labels = labels.to(torch.uint8)
    elif labels.dtype not in _CLASS_TARGETS:
        labels = labels.long()
    if ignore_index is not None and labels.dtype != torch.int64:
        info = torch.iinfo(labels.dtype)
        if not info.min <= ignore_index <= info.max:
            # no label of this dtype is ignore_index (so nothing is ignored), where a comparison
            # in the labels' dtype would wrap it into one (257 into a uint8's 1)
            labels = labels.long()
    on_cpu = labels.device.type == "cpu"
    if torch.compiler.is_compiling():
        return labels
    if (on_cpu and not checked_by_op) or (_ops.input_checks and not on_cpu and labels.device.type != "meta"):
        reference.check_class_targets(labels, classes, ignore_index)
    return labels


def _region_target(input, target, mask, softmax: bool, to_onehot_y: bool, ignore_index: Optional[int]):
    """MONAI's handling of the target: returns (the mask as the op takes it, the label map of a
    to_onehot_y target or None, softmax). The options do nothing for one channel (MONAI's
    warnings); ignore_index becomes a part of the mask: pixels whose label is ignore_index for a
    label map; for a one-hot target, those of the class ignore_index (0 <= ignore_index < C), else
    those whose channels are all 0 (MONAI's create_ignore_mask, with a one-hot target taken as 0/1)."""
    label_map = to_onehot_y and isinstance(input, Tensor) and input.dim() >= 2 and input.shape[1] != 1
    mask = _check_region_tensors(input, target, mask, label_map)
    classes = input.shape[1]
    if classes == 1:
        for name, value in (("softmax", softmax), ("to_onehot_y", to_onehot_y)):
            if value:
                warnings.warn(f"single channel prediction, `{name}=True` ignored.", stacklevel=4)
        softmax = False
    labels = _label_map(input, target, ignore_index) if label_map else None
    keep = None
    if ignore_index is not None:
        if labels is not None:
            keep = (labels != ignore_index).unsqueeze(1)
        elif classes == 1:
            keep = target != ignore_index
        elif 0 <= ignore_index < classes:
            keep = target[:, ignore_index:ignore_index + 1] == 0
        else:
            keep = target.sum(1, keepdim=True) > 0
    if keep is not None:
        mask = keep if mask is None else mask & keep
    return mask, labels, softmax


def _one_hot(labels: Tensor, classes: int) -> Tensor:
    """(B, C, spatial...) bool, True at each pixel's class (nowhere for a label outside [0, C))."""
    shape = (1, classes) + (1,) * (labels.dim() - 1)
    return labels.long().unsqueeze(1) == torch.arange(classes, device=labels.device).view(shape)


def _fused_softmax_region(chosen: str, input: Tensor) -> bool:
    """Whether the backend has the fused op softmax_region_sums for the input: triton everywhere,
    native on the CPU and CUDA."""
    return chosen == "triton" or (chosen == "native" and input.device.type in ("cpu", "cuda"))


def _kernel_region_sums(chosen: str, input: Tensor, target: Tensor, labels: Optional[Tensor], mask: Optional[Tensor],
                        sigmoid: bool, softmax: bool, mode: int, ignore_index: Optional[int]) -> Tensor:
    """The region sums from the kernels: softmax over a label map from the fused op
    softmax_region_sums (a mask (B, 1, spatial...) or none) on the native (CPU and CUDA) and triton
    backends; for the other combinations, composed with torch ops: the softmax (float32, float64
    for float64) and a bool one-hot target are made in memory before region_sums (README,
    "Multi-class")."""
    if (softmax and labels is not None and _fused_softmax_region(chosen, input)
            and (mask is None or mask.shape[1] == 1)):
        # ignore_index: those pixels are already out of the mask; given, the op's label check
        # (CPU) takes them for what they are
        return _ops.softmax_region_sums(chosen, input, labels, mask, mode, ignore_index=ignore_index)[0]
    if labels is not None:
        target = _one_hot(labels, input.shape[1])
    if softmax:
        x = input
        if mask is not None:  # a pixel masked out in every channel is not read (NaN padding)
            x = torch.where(mask.any(1, keepdim=True), x, torch.zeros((), dtype=x.dtype, device=x.device))
        input = torch.softmax(x, 1, dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)
    sums = _ops.region_sums(chosen, input, target, mask, sigmoid, mode)
    if labels is not None and input.device.type not in ("cpu", "meta"):
        # a label outside [0, C) (the CPU raised on it): counted as the uint8 check's bad targets,
        # which make the loss NaN
        bad = (labels < 0) | (labels >= input.shape[1])
        if ignore_index is not None:
            bad = bad & (labels != ignore_index)
        if mask is not None:
            bad = bad & mask.any(1)
        extra = torch.zeros_like(sums)
        extra[:, 0, 3] = bad.reshape(bad.shape[0], -1).sum(1).to(sums.dtype)
        sums = sums + extra
    return sums


def _check_kernel_region_target(chosen: str, input: Tensor, target: Tensor, mask: Optional[Tensor]) -> None:
    """The uint8 target's 0/1 check (the CPU's error) where the kernels do not make it: the native
    CPU op raises itself; triton on CPU tensors (the interpreter) always; on a GPU, either
    backend under set_input_checks(True) (a host sync)."""
    device = input.device.type
    if device == "meta" or (chosen == "native" and device == "cpu"):
        return
    if device == "cpu" or _ops.input_checks:
        reference.check_region_mask(target, mask, any_device=True)


def _region_loss(name: str, from_sums: Callable, input: Tensor, target: Tensor, labels: Optional[Tensor],
                 mask: Optional[Tensor], sigmoid: bool, softmax: bool, mode: int, ignore_index: Optional[int],
                 backend: str, reference_args: tuple, from_sums_args: tuple) -> Tensor:
    """reference_args: the reference loss's arguments after (input, target, mask) but for softmax
    (its last), which is added here."""
    chosen = _pick_backend(backend, input.device, input.numel(), tensors=(input, target))
    if chosen in _ops.PREFIX:
        if labels is None:
            _check_kernel_region_target(chosen, input, target, mask)
        out_dtype = input.dtype if labels is not None else reference.region_out_dtype(input, target)

        def fn(input, target, mask):
            sums = _kernel_region_sums(chosen, input, target, labels, mask, sigmoid, softmax, mode, ignore_index)
            return from_sums(sums, mode, *from_sums_args, input.dim() - 2, out_dtype)
    else:
        if labels is not None:
            target = _one_hot(labels, input.shape[1])
        if chosen in ("jit", "compile"):  # (their reference leaves the mask check out, as the segmentation loss's)
            reference.check_region_mask(target, mask)
        variant = _reference_variant(name, chosen)

        def fn(input, target, mask):
            return variant(input, target, mask, *reference_args, softmax)
    return _run(input.device, fn, input, target, mask)


def dice_loss(input: Tensor, target: Tensor, include_background: bool = True, to_onehot_y: bool = False,
              sigmoid: bool = False, softmax: bool = False, other_act: Optional[Callable] = None,
              squared_pred: bool = False, jaccard: bool = False, reduction: str = "mean", smooth_nr: float = 1e-5,
              smooth_dr: float = 1e-5, batch: bool = False, weight=None, soft_label: bool = False,
              ignore_index: Optional[int] = None, mask: Optional[Tensor] = None, backend: str = "auto") -> Tensor:
    """monai.losses.DiceLoss(...)(input, target) with the same arguments, plus mask and backend.

    input (B, C, spatial...): probabilities, or logits with sigmoid=True or softmax=True; target:
    the same shape, floating point, bool or uint8 (0/1), or with to_onehot_y=True a label map
    (B, 1, spatial...) or (B, spatial...) of class indices; mask: bool, broadcastable to the input
    (e.g. (B, 1, spatial...)), False where a pixel is left out of every sum; ignore_index: MONAI's
    (pixels of that label left out). other_act is not supported.
    """
    reduction = _check_region_options(to_onehot_y, softmax, other_act, ignore_index, reduction, backend, smooth_nr,
                                      smooth_dr, sigmoid, include_background=include_background,
                                      squared_pred=squared_pred, jaccard=jaccard, batch=batch, soft_label=soft_label)
    mask, labels, softmax = _region_target(input, target, mask, softmax, to_onehot_y, ignore_index)
    w = _dice_weight(weight, _foreground_classes(input, include_background), input.device)
    mode = reference.region_mode(squared_pred, soft_label)
    return _region_loss(
        "dice_loss", reference.dice_from_sums, input, target, labels, mask, sigmoid, softmax, mode, ignore_index,
        backend,
        (include_background, sigmoid, squared_pred, jaccard, reduction, float(smooth_nr), float(smooth_dr), batch, w,
         soft_label),
        (include_background, jaccard, float(smooth_nr), float(smooth_dr), batch, w, reduction))


def tversky_loss(input: Tensor, target: Tensor, include_background: bool = True, to_onehot_y: bool = False,
                 sigmoid: bool = False, softmax: bool = False, other_act: Optional[Callable] = None, alpha: float = 0.5,
                 beta: float = 0.5, reduction: str = "mean", smooth_nr: float = 1e-5, smooth_dr: float = 1e-5,
                 batch: bool = False, soft_label: bool = False, ignore_index: Optional[int] = None,
                 mask: Optional[Tensor] = None, backend: str = "auto") -> Tensor:
    """monai.losses.TverskyLoss(...)(input, target) with the same arguments, plus mask and backend
    (see dice_loss). reduction="none" gives (B, C), as MONAI's does."""
    reduction = _check_region_options(to_onehot_y, softmax, other_act, ignore_index, reduction, backend, smooth_nr,
                                      smooth_dr, sigmoid, include_background=include_background, batch=batch,
                                      soft_label=soft_label)
    _check_weight("alpha", alpha)
    _check_weight("beta", beta)
    mask, labels, softmax = _region_target(input, target, mask, softmax, to_onehot_y, ignore_index)
    _foreground_classes(input, include_background)
    mode = reference.region_mode(False, soft_label)
    return _region_loss(
        "tversky_loss", reference.tversky_from_sums, input, target, labels, mask, sigmoid, softmax, mode, ignore_index,
        backend,
        (include_background, sigmoid, float(alpha), float(beta), reduction, float(smooth_nr), float(smooth_dr), batch,
         soft_label),
        (include_background, float(alpha), float(beta), float(smooth_nr), float(smooth_dr), batch, reduction))


W_TYPES = ("square", "simple", "uniform")


def generalized_dice_loss(input: Tensor, target: Tensor, include_background: bool = True, to_onehot_y: bool = False,
                          sigmoid: bool = False, softmax: bool = False, other_act: Optional[Callable] = None,
                          w_type: str = "square", reduction: str = "mean", smooth_nr: float = 1e-5,
                          smooth_dr: float = 1e-5, batch: bool = False, soft_label: bool = False,
                          mask: Optional[Tensor] = None, backend: str = "auto") -> Tensor:
    """monai.losses.GeneralizedDiceLoss(...)(input, target) with the same arguments, plus mask and
    backend (see dice_loss)."""
    reduction = _check_region_options(to_onehot_y, softmax, other_act, None, reduction, backend, smooth_nr, smooth_dr,
                                      sigmoid, include_background=include_background, batch=batch,
                                      soft_label=soft_label)
    w_type = getattr(w_type, "value", w_type)
    _check_choice("w_type", w_type, W_TYPES)
    mask, labels, softmax = _region_target(input, target, mask, softmax, to_onehot_y, None)
    _foreground_classes(input, include_background)
    mode = reference.region_mode(False, soft_label)
    return _region_loss(
        "generalized_dice_loss", reference.generalized_dice_from_sums, input, target, labels, mask, sigmoid, softmax,
        mode, None, backend,
        (include_background, sigmoid, w_type, reduction, float(smooth_nr), float(smooth_dr), batch, soft_label),
        (include_background, w_type, float(smooth_nr), float(smooth_dr), batch, reduction))


def _pos_weight_tensor(pos_weight) -> Optional[Tensor]:
    """pos_weight as a floating tensor (or None), as torch's BCEWithLogitsLoss keeps it."""
    if pos_weight is None:
        return None
    if isinstance(pos_weight, (bool, str, bytes)) or not isinstance(pos_weight, (numbers.Real, Sequence, Tensor)):
        raise TypeError(f"pos_weight must be None, a number, a sequence of numbers or a tensor, "
                        f"got {type(pos_weight).__name__}")
    pw = torch.as_tensor(pos_weight)
    return pw if pw.is_floating_point() else pw.float()


def _check_pos_weight(pos_weight, input: Tensor) -> Optional[Tensor]:
    """torch's pos_weight: a tensor (or numbers) that broadcasts against the input, by torch's
    rules (per channel of (B, C, H, W): shape (C, 1, 1))."""
    pw = _pos_weight_tensor(pos_weight)
    if pw is None:
        return None
    pw = _to_device("pos_weight", pw, input.device)
    try:
        shape = torch.broadcast_shapes(pw.shape, input.shape)
    except RuntimeError:
        shape = None
    if shape != input.shape:
        raise ValueError(f"pos_weight must broadcast against the input's shape {tuple(input.shape)} (for one weight "
                         f"a channel: shape (C, 1, ...)), got {tuple(pw.shape)}")
    return pw


def _per_channel(pos_weight: Optional[Tensor], input: Tensor) -> Optional[Tensor]:
    """A pos_weight that holds one value a channel of input (B, C, ...), as a (C,) tensor; None
    for none, or for one that varies along another axis."""
    if pos_weight is None:
        return None
    shape = (1,) * (input.dim() - pos_weight.dim()) + tuple(pos_weight.shape)
    if any(size != 1 for axis, size in enumerate(shape) if axis != 1):
        return None
    return pos_weight.reshape(shape[1]).expand(input.shape[1])


def dice_bce_loss(input: Tensor, target: Tensor, include_background: bool = True, squared_pred: bool = False,
                  jaccard: bool = False, reduction: str = "mean", smooth_nr: float = 1e-5, smooth_dr: float = 1e-5,
                  batch: bool = False, weight=None, soft_label: bool = False, lambda_dice: float = 1.0,
                  lambda_bce: float = 1.0, lambda_tv: float = 0.0, pos_weight=None, mask: Optional[Tensor] = None,
                  backend: str = "auto") -> Tensor:
    """lambda_dice * dice_loss(sigmoid=True) + lambda_bce * BCE with logits (torch's pos_weight)
    + lambda_tv * total variation of sigmoid(input), on logits (B, C, spatial...).

    The Dice options are dice_loss's; the mask applies to Dice and BCE (BCE's mean is over the
    pixels it keeps); the total variation is the segmentation loss's, over 2 or 3 spatial axes.
    reduction: "mean" or "sum" (MONAI's DiceCELoss has no "none"). For one channel and
    lambda_tv = 0 it is MONAI's DiceCELoss(sigmoid=True) (README, "Region losses").
    """
    reduction = _check_region_options(False, False, None, None, reduction, backend, smooth_nr, smooth_dr,
                                      include_background=include_background, squared_pred=squared_pred,
                                      jaccard=jaccard, batch=batch, soft_label=soft_label)
    _check_combined("dice_bce_loss", reduction, lambda_dice=lambda_dice, lambda_bce=lambda_bce, lambda_tv=lambda_tv)
    _check_not_differentiable("pos_weight", pos_weight, "BCE with logits")
    mask = _check_region_tensors(input, target, mask)
    spatial = input.dim() - 2
    if lambda_tv != 0 and spatial not in (2, 3):
        raise ValueError(f"lambda_tv needs 2 or 3 spatial axes (the segmentation loss's total variation), "
                         f"got input of shape {tuple(input.shape)}")
    pw = _check_pos_weight(pos_weight, input)
    w = _dice_weight(weight, _foreground_classes(input, include_background), input.device)
    mode = reference.region_mode(squared_pred, soft_label)
    chosen = _pick_backend(backend, input.device, input.numel(), tensors=(input, target))
    options = (include_background, squared_pred, jaccard, reduction, float(smooth_nr), float(smooth_dr), batch, w,
               soft_label)
    if chosen not in _ops.PREFIX:
        if chosen in ("jit", "compile"):
            reference.check_region_mask(target, mask)
        variant = _reference_variant("dice_bce_loss", chosen)
        return _run(input.device, lambda *a: variant(*a, *options, float(lambda_dice), float(lambda_bce),
                                                     float(lambda_tv), pw), input, target, mask)

    # the kernels. The region sums take the BCE in the same passes (mode + REGION_WITH_BCE), for a
    # pos_weight of one value a channel (or none): Dice + BCE read the logits twice, as Dice alone.
    # A pos_weight that varies along space: Dice from the region ops, BCE from torch's op. Total
    # variation from the segmentation loss's op.
    _check_kernel_region_target(chosen, input, target, mask)
    pw_channels = _per_channel(pw, input)
    fused_bce = pw is None or pw_channels is not None

    def fn(input, target, mask):
        out_dtype = reference.region_out_dtype(input, target)
        seg_dims = spatial if spatial in (2, 3) else 2  # (with lambda_tv 0, only its BCE counts)
        sums = _ops.region_sums(chosen, input, target, mask, True,
                                mode + (reference.REGION_WITH_BCE if fused_bce else 0))
        loss = lambda_dice * reference.dice_from_sums(sums[..., :reference.REGION_SUMS], mode, include_background,
                                                      jaccard, float(smooth_nr), float(smooth_dr), batch, w, reduction,
                                                      spatial, out_dtype)
        if fused_bce:
            count = input.numel() if mask is None else mask.sum() * (input.shape[1] // mask.shape[1])
            bce = reference.bce_from_sums(sums[..., reference.REGION_SUMS:], pw_channels, count, reduction)
        else:
            bce = reference.masked_bce_with_logits(input, target, mask, pw, reduction)
        loss = loss + lambda_bce * bce
        if lambda_tv != 0:
            loss = loss + _ops.segmentation_loss(chosen, input, target, 0.0, float(lambda_tv), True, seg_dims,
                                                 reduction)
        return loss.to(out_dtype)

    return _run(input.device, fn, input, target, mask)


def dice_ce_loss(input: Tensor, target: Tensor, include_background: bool = True, to_onehot_y: bool = False,
                 sigmoid: bool = False, softmax: bool = False, other_act: Optional[Callable] = None,
                 squared_pred: bool = False, jaccard: bool = False, reduction: str = "mean", smooth_nr: float = 1e-5,
                 smooth_dr: float = 1e-5, batch: bool = False, weight=None, lambda_dice: float = 1.0,
                 lambda_ce: float = 1.0, label_smoothing: float = 0.0, ignore_index: Optional[int] = None,
                 lambda_tv: float = 0.0, backend: str = "auto") -> Tensor:
    """monai.losses.DiceCELoss(...)(input, target) with the same arguments, plus ignore_index,
    lambda_tv and backend: lambda_dice * dice_loss + lambda_ce * cross-entropy (+ lambda_tv *
    the total variation of the softmax, or of the sigmoid for one channel).

    As MONAI's: the cross-entropy takes the logits (whatever sigmoid or softmax say, which are
    the Dice's), keeps the background channel, and weighs the classes by weight (the Dice by
    weight[1:] with include_background=False); a target (B, 1, spatial...) is a label map for
    it, a target of the input's shape gives torch's class-probability cross-entropy (composed
    with torch, not fused); one channel gives BCE with logits, weight its pos_weight.
    ignore_index leaves the pixels of that label out of both terms (MONAI's cross-entropy
    ignores label -100 without it, as torch's). reduction: "mean" or "sum".
    """
    reduction = _check_region_options(to_onehot_y, softmax, other_act, ignore_index, reduction, backend, smooth_nr,
                                      smooth_dr, sigmoid, include_background=include_background,
                                      squared_pred=squared_pred, jaccard=jaccard, batch=batch)
    _check_combined("dice_ce_loss", reduction, lambda_dice=lambda_dice, lambda_ce=lambda_ce, lambda_tv=lambda_tv)
    _check_label_smoothing(label_smoothing)
    _check_not_differentiable("weight", weight, "DiceCELoss's cross-entropy")
    _check_tensors(input, input, _FLOATS)
    if not isinstance(target, Tensor):
        raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
    if (input.dim() < 3 or target.dim() != input.dim() or target.shape[1] not in (1, input.shape[1])
            or target.shape[:1] + target.shape[2:] != input.shape[:1] + input.shape[2:]):
        raise ValueError(f"target must be shaped as the input (B, C, spatial...) or as a label map (B, 1, "
                         f"spatial...), with input of at least one spatial axis; got input {tuple(input.shape)} and "
                         f"target {tuple(target.shape)}")
    classes, spatial = input.shape[1], input.dim() - 2
    if lambda_tv != 0 and spatial not in (2, 3):
        raise ValueError(f"lambda_tv needs 2 or 3 spatial axes (the segmentation loss's total variation), "
                         f"got input of shape {tuple(input.shape)}")
    w = _class_weight(weight)
    dice_weight = w[1:] if w is not None and w.dim() == 1 and not include_background else w
    chosen = _pick_backend(backend, input.device, input.numel(), tensors=(input, target))
    if classes > 1 and softmax and to_onehot_y and target.shape[1] == 1 and _fused_softmax_region(chosen, input):
        return _fused_dice_ce(chosen, input, target, include_background, squared_pred, jaccard, reduction,
                              float(smooth_nr), float(smooth_dr), batch, w, dice_weight, float(lambda_dice),
                              float(lambda_ce), float(label_smoothing), ignore_index, float(lambda_tv))
    loss = lambda_dice * dice_loss(input, target, include_background, to_onehot_y, sigmoid, softmax, None,
                                   squared_pred, jaccard, reduction, smooth_nr, smooth_dr, batch, dice_weight,
                                   ignore_index=ignore_index, backend=backend)
    if w is not None:
        w = _to_device("weight", w, input.device)
        w = w.expand(classes) if w.dim() == 0 else w
    if classes == 1:  # MONAI's BCE with logits, its weight the pos_weight
        keep = None if ignore_index is None else target != ignore_index
        t = target if target.is_floating_point() else target.to(input.dtype)
        ce = _run(input.device, reference.masked_bce_with_logits, input, t, keep, w, reduction)
    elif target.shape[1] == 1:  # a label map: the fused cross-entropy
        labels = target.squeeze(1)
        if labels.dtype == torch.bool:
            labels = labels.to(torch.uint8)
        elif labels.dtype not in _CLASS_TARGETS:
            labels = labels.long()  # (MONAI's target.long())
        ce = cross_entropy(input, labels, w, ignore_index=-100 if ignore_index is None else ignore_index,
                           reduction=reduction, label_smoothing=label_smoothing, backend=backend)
    else:
        if ignore_index is not None:
            raise NotImplementedError("dice_ce_loss takes ignore_index with a label map target (B, 1, spatial...) "
                                      "only: torch's class-probability cross-entropy has none")
        t = target if target.is_floating_point() else target.to(input.dtype)
        ce = torch.nn.functional.cross_entropy(input, t, w, reduction=reduction, label_smoothing=label_smoothing)
    loss = loss + lambda_ce * ce
    if lambda_tv != 0 and classes == 1:  # the sigmoid's, as DiceBCE's (the segmentation loss's TV)
        p = torch.sigmoid(input.to(reference.compute_dtype(input, input)))
        loss = reference._add_total_variation(loss, p, float(lambda_tv), spatial, reduction).to(loss.dtype)
    elif lambda_tv != 0:
        loss = loss + _softmax_tv(chosen, input, float(lambda_tv), spatial, reduction)
    return loss


def _softmax_tv(chosen: str, input: Tensor, lambda_tv: float, spatial: int, reduction: str) -> Tensor:
    """lambda_tv * the total variation of softmax(input) over the classes (DiceCE's lambda_tv
    term): the fused op softmax_tv_fwd on the native (CPU and CUDA) and triton backends, with no
    softmax tensor in memory; the reference's torch ops on the others."""
    if _fused_softmax_region(chosen, input):
        return _run(input.device, functools.partial(_ops.softmax_tv, chosen), input, lambda_tv, spatial, reduction)
    return reference.softmax_total_variation(input, lambda_tv, spatial, reduction)


def _fused_dice_ce(chosen: str, input: Tensor, target: Tensor, include_background: bool, squared_pred: bool,
                   jaccard: bool, reduction: str, smooth_nr: float, smooth_dr: float, batch: bool, w: Optional[Tensor],
                   dice_weight: Optional[Tensor], lambda_dice: float, lambda_ce: float, label_smoothing: float,
                   ignore_index: Optional[int], lambda_tv: float) -> Tensor:
    """dice_ce_loss(softmax=True, to_onehot_y=True) on the fused op (native CPU and CUDA, triton):
    the Dice's sums and the cross-entropy's in one pass (op softmax_region_sums with_ce), their
    summed gradient in one more; lambda_tv adds the op softmax_tv_fwd (one more pass, its gradient
    written in the forward). Without ignore_index the cross-entropy ignores label -100, as
    torch's; the Dice raises on it first on the CPU (a label outside [0, C), as MONAI's one-hot
    does), and on a GPU counts it as out of range (the loss NaN), as the composed losses do: the op
    is then given no ignore_index (its cross-entropy adds nothing for such a label)."""
    classes, spatial = input.shape[1], input.dim() - 2
    labels = _label_map(input, target, ignore_index, checked_by_op=chosen == "native" and input.device.type == "cpu")
    dice_w = _dice_weight(dice_weight, _foreground_classes(input, include_background), input.device)
    if w is not None:
        w = _to_device("weight", w.expand(classes) if w.dim() == 0 else w, input.device)
        if w.shape != (classes,):
            raise ValueError(f"weight must have one value a class, shape ({classes},), got {tuple(w.shape)}")
    mode = reference.region_mode(squared_pred, False)
    def fn(input, labels):
        sums, ce = _ops.softmax_region_sums(chosen, input, labels, None, mode, w, ignore_index, label_smoothing, True)
        dice = reference.dice_from_sums(sums, mode, include_background, jaccard, smooth_nr, smooth_dr, batch, dice_w,
                                        reduction, spatial, input.dtype)
        total, denominator, counted = ce.unbind()
        if reduction == "mean":  # torch's: NaN when D = 0, a zero gradient when no pixel counts
            divisor = torch.where(counted > 0, denominator, torch.ones_like(denominator))
            total = torch.where(denominator == 0, torch.full_like(denominator, float("nan")), total / divisor)
        return lambda_dice * dice + lambda_ce * total.to(input.dtype)

    loss = _run(input.device, fn, input, labels)
    if lambda_tv != 0:  # added as the composed path adds it: in float32 under autocast
        loss = loss + _softmax_tv(chosen, input, lambda_tv, spatial, reduction)
    return loss


# multi-class ------------------------------------------------------------------------------
#
# torch.nn.functional.cross_entropy for logits (B, C, spatial...) and class-index maps: its
# arguments, defaults and meaning (the deprecated size_average and reduce left out; the options
# are keyword-only, so a call that passes those by position fails rather than misreading them).

def _check_cross_entropy_args(input, target, weight, ignore_index, label_smoothing) -> None:
    if not isinstance(input, Tensor):
        raise TypeError(f"input must be a torch.Tensor, got {type(input).__name__}")
    if not isinstance(target, Tensor):
        raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
    if input.dtype not in _FLOATS:
        raise TypeError(f"input must be logits of dtype float16, bfloat16, float32 or float64; got {input.dtype}")
    if target.is_floating_point():
        raise TypeError(f"target must hold class indices (int64, int32 or uint8); class probabilities ({target.dtype} "
                        f"targets) are not supported by pylosses: use torch.nn.functional.cross_entropy for them")
    if target.dtype not in _CLASS_TARGETS:
        raise TypeError(f"target must hold class indices of dtype int64, int32 or uint8; got {target.dtype}")
    for name, tensor in (("input", input), ("target", target)):
        if tensor.layout != torch.strided:
            raise TypeError(f"{name} must be a dense (strided) tensor, got layout {tensor.layout}")
    if input.dim() < 2:
        raise ValueError(f"input must be shaped (B, C, spatial...) or (C,), got shape {tuple(input.shape)}")
    expected = input.shape[:1] + input.shape[2:]
    if target.shape != expected:
        raise ValueError(f"target must have the input's shape without the class axis 1, {tuple(expected)} for input "
                         f"{tuple(input.shape)}; got target {tuple(target.shape)}")
    if input.device != target.device:
        raise ValueError(f"input and target must be on the same device, got input on {input.device} and target on "
                         f"{target.device}")
    if weight is not None:
        if not isinstance(weight, Tensor):
            raise TypeError(f"weight must be a torch.Tensor or None, got {type(weight).__name__}")
        if not weight.is_floating_point():
            raise TypeError(f"weight must be floating point, got {weight.dtype}")
        if weight.shape != input.shape[1:2]:
            raise ValueError(f"weight must have one value a class, shape ({input.shape[1]},), got {tuple(weight.shape)}")
        if weight.device != input.device:
            raise ValueError(f"weight must be on the input's device, got weight on {weight.device} and input on "
                             f"{input.device}")
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise TypeError(f"ignore_index must be an int, got {type(ignore_index).__name__} {ignore_index!r}")
    _check_label_smoothing(label_smoothing)


def cross_entropy(input: Tensor, target: Tensor, weight: Optional[Tensor] = None, *, ignore_index: int = -100,
                  reduction: str = "mean", label_smoothing: float = 0.0, backend: str = "auto") -> Tensor:
    """torch.nn.functional.cross_entropy over logits (B, C, spatial...) (or (C,)) and class indices
    (B, spatial...) of dtype int64, int32 or uint8: weight, ignore_index, label_smoothing and
    reduction as torch's (its weighted-mean denominator; NaN when every pixel is ignored).
    Class-probability targets are not supported. On the CPU a class index out of range raises
    torch's IndexError; on a GPU it makes the loss NaN (set_input_checks(True) raises instead).
    """
    _check_options(reduction, backend)
    if isinstance(input, Tensor) and input.dim() == 1:  # one unbatched pixel, as torch takes it
        if not isinstance(target, Tensor) or target.dim() != 0:
            raise ValueError(f"target must be a 0-d class index for an input of shape (C,), got "
                             f"{tuple(target.shape) if isinstance(target, Tensor) else type(target).__name__}")
        loss = cross_entropy(input.unsqueeze(0), target.unsqueeze(0), weight, ignore_index=ignore_index,
                             reduction=reduction, label_smoothing=label_smoothing, backend=backend)
        return loss.squeeze(0) if reduction == "none" else loss
    _check_cross_entropy_args(input, target, weight, ignore_index, label_smoothing)
    _check_not_differentiable("weight", weight, "the cross-entropy")
    chosen = _pick_backend(backend, input.device, input.numel(), tensors=(input, target))
    if chosen in _ops.PREFIX:
        fn = functools.partial(_ops.cross_entropy, chosen)
    else:
        fn = _reference_variant("cross_entropy", chosen)
        if chosen in ("jit", "compile") and target.device.type == "cpu":  # (their reference leaves it out)
            reference.check_class_targets(target, input.shape[1], ignore_index)
    return _run(input.device, fn, input, target, weight, ignore_index, float(label_smoothing), reduction)
