"""The ops of pylosses: their schemas, fake kernels (for torch.compile and opcheck) and autograd.

Every op comes twice, with one schema (SCHEMAS, defined here before anything registers an
implementation): NAME, implemented by the compiled extension pylosses._C (csrc/cpu, csrc/cuda),
and triton_NAME, implemented here by the Triton kernels of pylosses.triton_kernels. So the
Triton backend needs no compiled code: a pure-Python install has it. Each loss's forward op
returns the loss and, when asked, its gradients for grad_output = 1 (DESIGN §3: the forward
pass writes the gradient); the backward of every loss applies grad_output with the op
loss_backward (on the CPU, a grad_output of exactly 1 needs no pass).
"""

import torch
from torch import Tensor

from . import reference
from ._dtypes import saved_grad_dtype

# Every loss has a forward op that returns the loss and, when asked, its gradients for
# grad_output = 1; the backward of every loss is loss_backward, which applies grad_output.
# reduction follows at::Reduction: 0 none, 1 mean, 2 sum.
SCHEMAS = {
    "mse_loss_fwd": "(Tensor input, Tensor target, int reduction, bool compute_grad) -> (Tensor, Tensor)",
    "seg_loss_fwd": "(Tensor input, Tensor target, float alpha, float beta, int spatial_dims, bool from_logits, "
                    "int reduction, bool compute_grad_input, bool compute_grad_target) -> (Tensor, Tensor, Tensor)",
    "loss_backward": "(Tensor grad_output, Tensor saved_grad, float scale, ScalarType dtype) -> Tensor",
    # The region losses (Dice, Tversky, generalised Dice) are functions of a few sums over each
    # (sample, channel): region_sums gives them, (B, C, 4) in float32 (float64 for float64), and
    # region_sums_backward the gradient of the elements from the gradient of those sums. Every
    # backend also takes mode + 4 (reference.REGION_WITH_BCE, with sigmoid): (B, C, 6), with
    # DiceBCE's two BCE sums.
    # reference.py turns the sums into the loss, for every backend (csrc/region_loss_math.h).
    "region_sums": "(Tensor input, Tensor target, Tensor? mask, bool sigmoid, int mode) -> Tensor",
    "region_sums_backward": "(Tensor grad_sums, Tensor input, Tensor target, Tensor? mask, bool sigmoid, int mode, "
                            "bool grad_input, bool grad_target) -> (Tensor, Tensor)",
    # The region sums (B, C, 4) of (softmax(input) over the classes, one-hot(labels)) for a label
    # map (B, spatial...) of int64, int32 or uint8, with no one-hot or softmax tensor, over the
    # pixels that the mask ((B, 1, spatial...) or none) keeps and whose label is not ignore_index
    # (a label outside [0, C) counts in sums[b, 0, 3] on a GPU; the CPU kernel raises torch's
    # IndexError for it, wherever it lies); and with_ce, the cross-entropy's sum of
    # losses, D and count, (3,) (cross_entropy_fwd's, weight, ignore_index, label_smoothing; the
    # mask does not apply to it). The backward takes the gradients of both. Kernels: native on the
    # CPU and CUDA (csrc/cpu/softmax_region.cpp, csrc/cuda/softmax_region.cu) and triton
    # (triton_kernels/softmax_region.py).
    "softmax_region_sums": "(Tensor input, Tensor labels, Tensor? mask, int mode, Tensor? weight, int ignore_index, "
                           "float label_smoothing, bool with_ce) -> (Tensor, Tensor)",
    "softmax_region_sums_backward": "(Tensor grad_sums, Tensor grad_ce, Tensor input, Tensor labels, Tensor? mask, "
                                    "int mode, Tensor? weight, int ignore_index, float label_smoothing) -> Tensor",
    # The multi-class cross-entropy over logits (B, C, spatial...) and class indices (B, spatial...):
    # the loss, the gradient `grad` and a 0-d `grad_scale` (float32; float64 for float64), for an
    # input gradient of grad * grad_output * grad_scale (grad_output broadcast over the classes
    # for "none"). A backend that knows torch's "mean" denominator D before it writes the
    # gradient (the CPU reads the targets first) gives grad_scale 1; one that learns D only from
    # its own sums (the GPUs: no extra pass, no host sync) gives 1 / D, 0 when no pixel counts.
    "cross_entropy_fwd": "(Tensor input, Tensor target, Tensor? weight, int ignore_index, float label_smoothing, "
                         "int reduction, bool compute_grad) -> (Tensor, Tensor, Tensor)",
    # beta * the total variation of softmax(input) over the classes (dim 1) along the last
    # spatial_dims (2 or 3) axes of input (B, C, spatial...), as reference.softmax_total_variation:
    # for each axis of length L > 1, |p[.., k+1, ..] - p[.., k, ..]| over every (sample, class,
    # pair), its mean (reduction 1) or sum (2); no "none" (0). The loss in input's dtype, computed
    # in float32 (float64 for float64); with compute_grad its input gradient for grad_output = 1,
    # written in the forward (saved_grad_dtype), else an empty (0,) tensor. The lambda_tv term of
    # DiceCELoss, with no softmax tensor in memory.
    "softmax_tv_fwd": "(Tensor input, float beta, int spatial_dims, int reduction, bool compute_grad) "
                      "-> (Tensor, Tensor)",
}


def define_ops(namespace: str, prefixes=("",)) -> torch.library.Library:
    """Define every op of SCHEMAS in `namespace`, once a prefix (the Library must be kept alive:
    dropping it removes the definitions). The tests define them again for the CUDA kernels
    built for the CPU (tests/test_cuda_emulation.py)."""
    library = torch.library.Library(namespace, "DEF")
    for prefix in prefixes:
        for name, signature in SCHEMAS.items():
            library.define(prefix + name + signature)
    return library


PREFIX = {"native": "", "triton": "triton_"}  # a backend's ops: torch.ops.pylosses.<prefix><name>
_library = define_ops("pylosses", PREFIX.values())

try:
    from . import _C  # noqa: F401  (loading it registers the CPU and CUDA kernels of the native ops)

    EXTENSION_ERROR = None
except ImportError as error:  # not built (a pure-Python install): the native backend is unavailable
    EXTENSION_ERROR = error
# The dispatch keys the native kernels were built for, read once here: torch.compile cannot trace
# torch._C._dispatch_has_kernel_for_dispatch_key (it returns a bool), and backend checks run inside
# compiled code
NATIVE_KEYS = frozenset(key for key in ("CPU", "CUDA") if EXTENSION_ERROR is None
                        and torch._C._dispatch_has_kernel_for_dispatch_key("pylosses::seg_loss_fwd", key))

REDUCTIONS = {"none": 0, "mean": 1, "sum": 2}

# pylosses.set_input_checks: raise on probabilities outside [0, 1] on GPUs too (a host sync)
input_checks = False
_NONE = REDUCTIONS["none"]


def _grad_like(tensor: Tensor, wanted: bool, dtype: torch.dtype) -> Tensor:
    shape = tensor.shape if wanted else (0,)
    return tensor.new_empty(shape, dtype=saved_grad_dtype(dtype))


def _eager(*tensors: Tensor) -> bool:
    """Whether these are plain tensors, not the subclasses (fake, functional) with which
    torch.compile and opcheck trace the backward."""
    return all(type(t) is torch.Tensor for t in tensors)


def _gradient(backward_op, grad_output: Tensor, saved: Tensor, scale: float, dtype: torch.dtype, shape) -> Tensor:
    """saved * grad_output * scale as a `dtype` tensor."""
    if saved.numel() == 0 and torch.Size(shape).numel() != 0:
        raise RuntimeError("pylosses: backward needs the gradient that the forward op was asked not to compute")
    if (scale == 1.0 and saved.dtype == dtype and grad_output.numel() == 1 and saved.device.type == "cpu"
            and _eager(grad_output, saved) and grad_output.item() == 1.0):
        # loss.backward() of a mean or sum: the saved gradient is the gradient. Returned as it is
        # (never written to, so a second backward sees it intact); autograd takes it over as
        # .grad when nothing else holds it. Reading grad_output is free on the CPU; on a GPU it
        # would be a host sync, so there loss_backward always runs.
        return saved
    return backward_op(grad_output, saved, scale, dtype)


def _op(backend: str, name: str):
    return getattr(torch.ops.pylosses, PREFIX[backend] + name)


def mse_loss(backend: str, input: Tensor, target: Tensor, reduction: str) -> Tensor:
    compute_grad = torch.is_grad_enabled() and (input.requires_grad or target.requires_grad)
    loss, _ = _op(backend, "mse_loss_fwd")(input, target, REDUCTIONS[reduction], compute_grad)
    return loss


def _check_inputs(input: Tensor, target: Tensor, from_logits: bool) -> None:
    """The checking mode of set_input_checks(True) for the CUDA kernel, which (to need no host
    sync) reports what the CPU kernel raises only as a NaN loss: the same errors, by request."""
    reference.check_values(input, target, from_logits)


def segmentation_loss(
    backend: str, input: Tensor, target: Tensor, alpha: float, beta: float, from_logits: bool, spatial_dims: int,
    reduction: str,
) -> Tensor:
    if input_checks and backend == "native" and input.device.type not in ("cpu", "meta"):
        _check_inputs(input, target, from_logits)
    grad_enabled = torch.is_grad_enabled()
    loss, _, _ = _op(backend, "seg_loss_fwd")(
        input, target, float(alpha), float(beta), spatial_dims, from_logits, REDUCTIONS[reduction],
        grad_enabled and input.requires_grad, grad_enabled and target.requires_grad,
    )
    return loss


def region_sums(backend: str, input: Tensor, target: Tensor, mask, sigmoid: bool, mode: int) -> Tensor:
    return _op(backend, "region_sums")(input, target, mask, sigmoid, mode)


def _region_sums_fake(input, target, mask, sigmoid, mode):
    dtype = reference.compute_dtype(input, target)
    return input.new_empty((input.shape[0], input.shape[1], reference.region_sums_count(mode)), dtype=dtype)


def _region_sums_backward_fake(grad_sums, input, target, mask, sigmoid, mode, grad_input, grad_target):
    return (input.new_empty(input.shape if grad_input else (0,)),
            target.new_empty(target.shape if grad_target else (0,)))


def _region_setup_context(ctx, inputs, output):
    input, target, mask, sigmoid, mode = inputs
    ctx.save_for_backward(input, target, mask)
    ctx.sigmoid, ctx.mode = sigmoid, mode
    ctx.set_materialize_grads(False)


def _make_region_backward(backward_op):
    def backward(ctx, grad_sums):
        input, target, mask = ctx.saved_tensors
        if grad_sums is None:
            return None, None, None, None, None
        want_input, want_target = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_input, grad_target = backward_op(grad_sums.contiguous(), input, target, mask, ctx.sigmoid, ctx.mode,
                                              want_input, want_target)
        grads = [grad_input if want_input else None, grad_target if want_target else None]
        if torch.is_grad_enabled():  # create_graph=True: differentiating these again raises
            grads = [None if g is None else _NoDoubleBackward.apply(g, input, target) for g in grads]
        return grads[0], grads[1], None, None, None

    return backward


NO_IGNORE = -2**63  # an ignore_index no label is (int64's lowest)


def softmax_region_sums(backend: str, input: Tensor, labels: Tensor, mask, mode: int, weight=None, ignore_index=None,
                        label_smoothing: float = 0.0, with_ce: bool = False):
    """The backend's softmax_region_sums (native: CPU or CUDA, as the tensors' device): (sums, ce)."""
    return _op(backend, "softmax_region_sums")(input, labels, mask, mode, weight,
                                               NO_IGNORE if ignore_index is None else ignore_index,
                                               float(label_smoothing), with_ce)


def _softmax_region_sums_fake(input, labels, mask, mode, weight, ignore_index, label_smoothing, with_ce):
    dtype = reference.compute_dtype(input, input)
    return (input.new_empty((input.shape[0], input.shape[1], reference.REGION_SUMS), dtype=dtype),
            input.new_empty((3,), dtype=dtype))


def _softmax_region_sums_backward_fake(grad_sums, grad_ce, input, labels, mask, mode, weight, ignore_index,
                                       label_smoothing):
    return input.new_empty(input.shape)


def _softmax_region_setup_context(ctx, inputs, output):
    input, labels, mask, mode, weight, ignore_index, label_smoothing, with_ce = inputs
    ctx.save_for_backward(input, labels, mask, weight)
    ctx.options = mode, ignore_index, label_smoothing
    ctx.set_materialize_grads(False)


def _make_softmax_region_backward(backward_op):
    """The autograd backward of softmax_region_sums, by backward_op (a backend's
    softmax_region_sums_backward, or the tests' emulated CUDA kernel's)."""
    def backward(ctx, grad_sums, grad_ce):
        input, labels, mask, weight = ctx.saved_tensors
        if (grad_sums is None and grad_ce is None) or not ctx.needs_input_grad[0]:
            return (None,) * 8
        dtype = reference.compute_dtype(input, input)
        grad_sums = input.new_zeros((input.shape[0], input.shape[1], reference.REGION_SUMS), dtype=dtype) \
            if grad_sums is None else grad_sums.contiguous()
        grad_ce = input.new_zeros((3,), dtype=dtype) if grad_ce is None else grad_ce
        mode, ignore_index, label_smoothing = ctx.options
        grad = backward_op(grad_sums, grad_ce, input, labels, mask, mode, weight, ignore_index, label_smoothing)
        if torch.is_grad_enabled():  # create_graph=True: differentiating it again raises
            grad = _NoDoubleBackward.apply(grad, input)
        return (grad,) + (None,) * 7

    return backward


def cross_entropy(backend: str, input: Tensor, target: Tensor, weight, ignore_index: int, label_smoothing: float,
                  reduction: str) -> Tensor:
    if input_checks and backend == "native" and input.device.type not in ("cpu", "meta"):
        reference.check_class_targets(target, input.shape[1], ignore_index)
    compute_grad = torch.is_grad_enabled() and input.requires_grad
    loss, _, _ = _op(backend, "cross_entropy_fwd")(input, target, weight, ignore_index, float(label_smoothing),
                                                   REDUCTIONS[reduction], compute_grad)
    return loss


def _cross_entropy_fwd_fake(input, target, weight, ignore_index, label_smoothing, reduction, compute_grad):
    loss = input.new_empty(target.shape if reduction == _NONE else ())
    scale = input.new_empty((), dtype=reference.compute_dtype(input, input))
    return loss, _grad_like(input, compute_grad, input.dtype), scale


def _cross_entropy_setup_context(ctx, inputs, output):
    input, target = inputs[:2]
    _, grad, grad_scale = output
    ctx.save_for_backward(grad, grad_scale, input, target)
    ctx.mark_non_differentiable(grad, grad_scale)
    ctx.set_materialize_grads(False)
    ctx.dtype, ctx.shape, ctx.none = input.dtype, input.shape, inputs[5] == _NONE


def _make_cross_entropy_backward(backward_op):
    def backward(ctx, grad_loss, *_unused):
        grad, grad_scale, input, target = ctx.saved_tensors
        if grad_loss is None or not ctx.needs_input_grad[0]:
            return (None,) * 7
        # grad_output times the backend's scale: a scalar (B, spatial...) tensor, in float32 or
        # float64, so that a 16-bit grad_output does not round 1 / D
        scaled = grad_loss.to(grad_scale.dtype) * grad_scale
        if ctx.none:
            # one grad_output a pixel, over its C classes (not consecutive elements, which
            # loss_backward's groups are): broadcast by torch, one elementwise pass all the same
            if grad.numel() == 0 and torch.Size(ctx.shape).numel() != 0:
                raise RuntimeError("pylosses: backward needs the gradient that the forward op was asked not to compute")
            grad_input = (grad * scaled.unsqueeze(1)).to(ctx.dtype)
        else:
            grad_input = _gradient(backward_op, scaled, grad, 1.0, ctx.dtype, ctx.shape)
        if torch.is_grad_enabled():  # create_graph=True: differentiating it again raises
            grad_input = _NoDoubleBackward.apply(grad_input, input)
        return (grad_input,) + (None,) * 6

    return backward


def softmax_tv(backend: str, input: Tensor, beta: float, spatial_dims: int, reduction: str) -> Tensor:
    """beta * the total variation of softmax(input) over the classes (op softmax_tv_fwd)."""
    compute_grad = torch.is_grad_enabled() and input.requires_grad
    loss, _ = _op(backend, "softmax_tv_fwd")(input, float(beta), spatial_dims, REDUCTIONS[reduction], compute_grad)
    return loss


def _softmax_tv_fwd_fake(input, beta, spatial_dims, reduction, compute_grad):
    return input.new_empty(()), _grad_like(input, compute_grad, input.dtype)


def _softmax_tv_setup_context(ctx, inputs, output):
    input = inputs[0]
    ctx.save_for_backward(output[1], input)
    ctx.mark_non_differentiable(output[1])
    ctx.set_materialize_grads(False)
    ctx.dtype, ctx.shape = input.dtype, input.shape


def _make_softmax_tv_backward(backward_op):
    def backward(ctx, grad_loss, *_unused):
        grad, input = ctx.saved_tensors
        if grad_loss is None or not ctx.needs_input_grad[0]:
            return (None,) * 5
        grad_input = _gradient(backward_op, grad_loss, grad, 1.0, ctx.dtype, ctx.shape)
        if torch.is_grad_enabled():  # create_graph=True: differentiating it again raises
            grad_input = _NoDoubleBackward.apply(grad_input, input)
        return (grad_input,) + (None,) * 4

    return backward


def _mse_loss_fwd_fake(input, target, reduction, compute_grad):
    loss_shape = input.shape if reduction == _NONE else ()
    dtype = torch.promote_types(input.dtype, target.dtype)
    # one saved gradient serves input and target, in their common dtype
    return input.new_empty(loss_shape, dtype=dtype), _grad_like(input, compute_grad, dtype)


def _seg_loss_fwd_fake(input, target, alpha, beta, spatial_dims, from_logits, reduction, grad_input, grad_target):
    loss_shape = input.shape[:1] if reduction == _NONE else ()
    loss = input.new_empty(loss_shape, dtype=torch.promote_types(input.dtype, target.dtype))
    return loss, _grad_like(input, grad_input, input.dtype), _grad_like(target, grad_target, target.dtype)


def _loss_backward_fake(grad_output, saved_grad, scale, dtype):
    return saved_grad.new_empty(saved_grad.shape, dtype=dtype)


def _setup_context(ctx, inputs, output):
    """Of every forward op: inputs start with (input, target); output is (loss, *saved gradients)."""
    input, target = inputs[:2]
    # input and target too (as torch's own losses keep them): a gradient asked for with
    # create_graph=True is tied to them, so that differentiating it again raises
    ctx.save_for_backward(*output[1:], input, target)
    ctx.mark_non_differentiable(*output[1:])
    ctx.set_materialize_grads(False)  # else autograd fills zero gradients for the saved ones
    ctx.dtypes = (input.dtype, target.dtype)
    ctx.shape = input.shape
    ctx.n_inputs = len(inputs)


class _NoDoubleBackward(torch.autograd.Function):
    """A gradient the kernels computed, passed through; differentiating it raises. The kernels
    give first derivatives only: without this, create_graph=True would hand back a gradient with
    no grad_fn, and the second derivative would be silently missing or fail somewhere else."""

    @staticmethod
    def forward(ctx, grad, *inputs):  # inputs: what the gradient depends on, for autograd to see
        return grad.view_as(grad)

    @staticmethod
    def backward(ctx, _):
        raise RuntimeError(
            "pylosses: second-order gradients (double backward, create_graph=True) are not supported by the "
            "fused kernels of the native and triton backends; backend='reference' (or 'jit') supports them")


def _make_backward(backward_op):
    def backward(ctx, grad_loss, *_unused):
        *saved, input, target = ctx.saved_tensors
        grads = [None] * ctx.n_inputs
        if grad_loss is None:  # the loss itself was not used: zero gradients, which None stands for
            return tuple(grads)
        # MSE saves one gradient, d/dt (x - t)^2 = -d/dx; the segmentation loss one for each
        saved_target, target_sign = (saved[0], -1.0) if len(saved) == 1 else (saved[1], 1.0)
        if ctx.needs_input_grad[1]:
            grads[1] = _gradient(backward_op, grad_loss, saved_target, target_sign, ctx.dtypes[1], ctx.shape)
        if ctx.needs_input_grad[0]:
            grads[0] = _gradient(backward_op, grad_loss, saved[0], 1.0, ctx.dtypes[0], ctx.shape)
        if torch.is_grad_enabled():  # create_graph=True: a graph is built through this backward
            grads = [None if g is None else _NoDoubleBackward.apply(g, input, target) for g in grads]
        return tuple(grads)

    return backward


def _register(backend: str) -> None:
    prefix = PREFIX[backend]
    torch.library.register_fake(f"pylosses::{prefix}mse_loss_fwd", _mse_loss_fwd_fake)
    torch.library.register_fake(f"pylosses::{prefix}seg_loss_fwd", _seg_loss_fwd_fake)
    torch.library.register_fake(f"pylosses::{prefix}loss_backward", _loss_backward_fake)
    backward = _make_backward(_op(backend, "loss_backward"))
    for name in ("mse_loss_fwd", "seg_loss_fwd"):
        torch.library.register_autograd(f"pylosses::{prefix}{name}", backward, setup_context=_setup_context)
    torch.library.register_fake(f"pylosses::{prefix}cross_entropy_fwd", _cross_entropy_fwd_fake)
    torch.library.register_autograd(f"pylosses::{prefix}cross_entropy_fwd",
                                    _make_cross_entropy_backward(_op(backend, "loss_backward")),
                                    setup_context=_cross_entropy_setup_context)
    torch.library.register_fake(f"pylosses::{prefix}region_sums", _region_sums_fake)
    torch.library.register_fake(f"pylosses::{prefix}region_sums_backward", _region_sums_backward_fake)
    torch.library.register_autograd(f"pylosses::{prefix}region_sums",
                                    _make_region_backward(_op(backend, "region_sums_backward")),
                                    setup_context=_region_setup_context)
    torch.library.register_fake(f"pylosses::{prefix}softmax_region_sums", _softmax_region_sums_fake)
    torch.library.register_fake(f"pylosses::{prefix}softmax_region_sums_backward", _softmax_region_sums_backward_fake)
    torch.library.register_autograd(f"pylosses::{prefix}softmax_region_sums",
                                    _make_softmax_region_backward(_op(backend, "softmax_region_sums_backward")),
                                    setup_context=_softmax_region_setup_context)
    torch.library.register_fake(f"pylosses::{prefix}softmax_tv_fwd", _softmax_tv_fwd_fake)
    torch.library.register_autograd(f"pylosses::{prefix}softmax_tv_fwd",
                                    _make_softmax_tv_backward(_op(backend, "loss_backward")),
                                    setup_context=_softmax_tv_setup_context)


def _triton_seg_loss_fwd(input, target, alpha, beta, spatial_dims, from_logits, reduction, grad_input, grad_target):
    check = input.device.type == "cpu" or input_checks  # on the CPU the check costs no sync
    return triton_segmentation.seg_loss_fwd(input, target, alpha, beta, spatial_dims, from_logits, reduction,
                                            grad_input, grad_target, check)


def _triton_cross_entropy_fwd(input, target, weight, ignore_index, label_smoothing, reduction, compute_grad):
    triton_cross_entropy.check_ce_args(input, target, weight, label_smoothing, reduction)  # (before the labels')
    if input.device.type == "cpu" or input_checks:  # on the CPU the check costs no sync
        reference.check_class_targets(target, input.shape[1], ignore_index)
    return triton_cross_entropy.cross_entropy_fwd(input, target, weight, ignore_index, label_smoothing, reduction,
                                                  compute_grad)


_register("native")  # without the extension its ops have no kernels, and every call raises
try:
    from .triton_kernels import common as triton_common
    from .triton_kernels import cross_entropy as triton_cross_entropy
    from .triton_kernels import mse as triton_mse
    from .triton_kernels import region as triton_region
    from .triton_kernels import segmentation as triton_segmentation
    from .triton_kernels import softmax_region as triton_softmax_region
    from .triton_kernels import softmax_tv as triton_softmax_tv

    TRITON_ERROR = None
except ImportError as error:  # no Triton: the triton backend is unavailable
    TRITON_ERROR = error
else:
    for _name, _impl in (("mse_loss_fwd", triton_mse.mse_loss_fwd), ("seg_loss_fwd", _triton_seg_loss_fwd),
                         ("loss_backward", triton_common.loss_backward), ("region_sums", triton_region.region_sums),
                         ("region_sums_backward", triton_region.region_sums_backward),
                         ("cross_entropy_fwd", _triton_cross_entropy_fwd),
                         ("softmax_region_sums", triton_softmax_region.softmax_region_sums),
                         ("softmax_region_sums_backward", triton_softmax_region.softmax_region_sums_backward),
                         ("softmax_tv_fwd", triton_softmax_tv.softmax_tv_fwd)):
        _library.impl("triton_" + _name, _impl, "CompositeExplicitAutograd")
    _register("triton")
