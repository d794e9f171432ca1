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
import warnings
from typing import Callable, List, Union

import torch
from torch import Tensor

from . import _ops, reference

__all__ = ["mse_loss", "segmentation_loss", "available_backends", "set_input_checks", "input_checks_enabled"]

BACKENDS = ("auto", "native", "triton", "reference", "jit", "compile")
REDUCTIONS = tuple(_ops.REDUCTIONS)  # "none", "mean", "sum"
_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_SEG_TARGETS = _FLOATS + (torch.bool, torch.uint8)

# backend="auto": the fastest backends for each device type, fastest first, as the benchmark
# results (benchmarks/results/) show them. The first available one is used; anything else
# falls back to "reference" with a one-time warning that says what is missing.
FASTEST = {
    "cpu": ("native",),
    "meta": ("native", "triton"),  # shapes and dtypes from the ops' fake kernels, as on every device
    # the CUDA kernels first, then Triton (a pure-Python install has it); their order is to be
    # set by a GPU measurement: until then neither has run on one (README, "Not yet run on a GPU")
    "cuda": ("native", "triton"),
}
# The benchmark results folder (benchmarks/results/) that FASTEST's GPU order comes from, once
# a GPU has measured the kernels; python -m pylosses reports it.
GPU_MEASUREMENT = None

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
    if key and torch._C._dispatch_has_kernel_for_dispatch_key("pylosses::seg_loss_fwd", key):
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


def _pick_backend(backend: str, device: torch.device, numel: int = 1) -> str:
    if backend == "compile" and (numel == 0 or device.type == "meta"):
        # inductor fails on empty tensors (a division by zero in mean) and, once it compiles
        # with dynamic shapes, on meta tensors; the same reference, run eagerly, gives the result
        return "reference"
    if backend != "auto":
        reason = _unavailable_reason(backend, device)
        if reason:
            raise RuntimeError(f"backend={backend!r} is not available for {device.type} tensors: {reason}")
        return backend
    choice = _auto_backend(device)
    if choice == "reference" and device.type not in _warned:
        _warned.add(device.type)
        warnings.warn(f"pylosses: backend='auto' uses 'reference' for {device.type} tensors "
                      f"({_auto_fallback_reason(device)})", stacklevel=3)
    return choice


def _auto_backend(device: Union[str, torch.device]) -> str:
    """What backend="auto" runs on `device`: the first available of FASTEST, else "reference"."""
    device = torch.device(device)
    for candidate in FASTEST.get(device.type, ()):
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
    if not -math.inf < value < math.inf:
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
    chosen = _pick_backend(backend, input.device, input.numel())
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
    chosen = _pick_backend(backend, input.device, input.numel())
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
