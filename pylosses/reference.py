"""The pure-PyTorch losses: the ground truth that every kernel is checked against.

They follow DESIGN §1 and the README's "Semantics": arithmetic in float32 (float64 when an
operand is float64), the result in torch's result dtype, BCE and its gradients exactly as
torch.nn gives them. They do not validate their arguments (pylosses.functional does that for
every backend), only the targets' values, as torch's losses do and beyond (README, "Semantics").
`scripted` and `compiled` give their torch.jit.script and torch.compile variants.
"""

from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["mse_loss", "segmentation_loss", "dice_loss", "tversky_loss", "generalized_dice_loss", "region_sums",
           "dice_bce_loss", "cross_entropy", "scripted", "compiled"]


# The targets' errors, as the kernels give them (csrc/seg_loss_math.h and csrc/kernel_common.h
# have the same texts): torch's own for a float target outside [0, 1] with probabilities
# (nn.BCELoss checks it), and for a uint8 mask that holds anything but 0 and 1, in either form.
def _mask_message() -> str:  # a function: torch.jit.script cannot read a global string
    return "target masks (uint8 or bool) must hold only 0 and 1; for a 0/255 mask, divide it by 255 or compare it with 0"


TARGET_RANGE_MESSAGE = "all elements of target should be between 0 and 1"
MASK_MESSAGE = _mask_message()


def check_mask(target: Tensor) -> None:
    """Raises the mask error for a uint8 CPU target that holds anything but 0 and 1."""
    if target.dtype == torch.uint8 and target.device.type == "cpu" and bool((target > 1).any()):
        raise RuntimeError(_mask_message())


def _in_unit_range(t: Tensor) -> bool:
    return bool(((t >= 0) & (t <= 1)).all())  # NaN fails both; a host sync on a GPU


def check_values(input: Tensor, target: Tensor, from_logits: bool) -> None:
    """The errors the CPU kernels raise, for kernels that report them only as a NaN loss (the
    CUDA kernel under set_input_checks(True), the Triton launcher once its loss is NaN)."""
    if not from_logits and not _in_unit_range(input):
        raise RuntimeError("all elements of input should be between 0 and 1")
    if target.dtype == torch.uint8 and not _in_unit_range(target):
        raise RuntimeError(MASK_MESSAGE)
    if not from_logits and target.is_floating_point() and not _in_unit_range(target):
        raise RuntimeError(TARGET_RANGE_MESSAGE)


def compute_dtype(input: Tensor, target: Tensor) -> torch.dtype:
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
    dtype = compute_dtype(input, target)
    loss = F.mse_loss(input.to(dtype), target.to(dtype), reduction=reduction)
    return loss.to(torch.promote_types(input.dtype, target.dtype))


def _add_total_variation(loss: Tensor, p: Tensor, beta: float, spatial_dims: int, reduction: str) -> Tensor:
    """loss + beta * the total variation of p over its last spatial_dims axes: mean (or sum,
    or each sample's mean) |p[k+1] - p[k]| along each axis; an axis of length 1 adds nothing."""
    for axis in range(p.dim() - spatial_dims, p.dim()):
        n = p.size(axis)
        if n > 1:
            diff = (p.narrow(axis, 1, n - 1) - p.narrow(axis, 0, n - 1)).abs()
            loss = loss + beta * _reduce(diff, reduction)
    return loss


def softmax_total_variation(input: Tensor, beta: float, spatial_dims: int, reduction: str) -> Tensor:
    """beta * the total variation of softmax(input) over the classes (dim 1) along the last
    spatial_dims axes (the lambda_tv term of DiceCELoss): for each axis, the mean (or sum) of
    |p[.., k+1, ..] - p[.., k, ..]| over samples, classes and pairs; computed in float32 (float64
    for float64), returned in the input's dtype. reduction: "mean" or "sum"."""
    p = torch.softmax(input.to(compute_dtype(input, input)), 1)
    return _add_total_variation(p.new_zeros(()), p, beta, spatial_dims, reduction).to(input.dtype)


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
    dtype = compute_dtype(input, target)
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
    loss = _add_total_variation(alpha * _reduce(bce, reduction), p, beta, spatial_dims, reduction)
    bad = torch.zeros((), dtype=torch.bool, device=loss.device)
    if target.dtype == torch.uint8 and (compiling or target.device.type != "cpu"):
        bad = (target > 1).any()
    if compiling and not from_logits and target.is_floating_point():
        bad = bad | ~((target >= 0) & (target <= 1)).all()
    loss = torch.where(bad, torch.full_like(loss, float("nan")), loss)
    return loss.to(torch.promote_types(input.dtype, target.dtype))


# Region losses ------------------------------------------------------------------------------
#
# MONAI's Dice, Tversky and generalised Dice losses (monai.losses 1.6), as functions of a few
# sums over each (sample, channel)'s pixels: region_sums gives them (the native and triton
# backends from their kernels, op region_sums), and *_from_sums turns them into the loss with
# MONAI's own formulas, quirks included (README, "Region losses"). The sums are taken in
# float32 (float64 for float64) whatever the input dtype.

# The sums (csrc/region_loss_math.h, RegionMode): "linear": sum p t, sum p, sum t; "squared"
# (squared_pred): sum p t, sum p^2, sum t^2; "l1" (soft_label, MONAI's form from vector norms):
# sum |p - t|, sum |p|, sum |t|. A fourth sum counts uint8 targets above 1 (a 0/255 mask).
REGION_MODES = {"linear": 0, "squared": 1, "l1": 2}
REGION_SUMS = 4
# DiceBCE's BCE in the same pass (the CPU kernel; csrc/region_loss_math.h): the mode plus
# REGION_WITH_BCE asks for two more sums, of logits x: BCEWithLogits(x, t) and t softplus(-x),
# from which BCE with a per-channel pos_weight w is sum a + (w - 1) sum b.
REGION_WITH_BCE = 4
BCE_SUMS = 2


def region_sums_count(mode: int) -> int:
    """How many sums region_sums gives a (sample, channel) for this mode."""
    return REGION_SUMS + (BCE_SUMS if mode & REGION_WITH_BCE else 0)


def region_mode(squared_pred: bool, soft_label: bool) -> int:
    """MONAI's compute_tp_fp_fn: its soft-label form from norms for soft_label or squared_pred
    (where, squared, it equals the plain sums), else the plain sums."""
    if squared_pred:
        return 1
    return 2 if soft_label else 0


def _kept(v: Tensor, mask: Tensor) -> Tensor:
    """v where the mask keeps it, else 0."""
    return torch.where(mask, v, torch.zeros_like(v))


def region_sums(input: Tensor, target: Tensor, mask: Optional[Tensor], sigmoid: bool, mode: int,
                softmax: bool = False) -> Tensor:
    """The (B, C, 4) sums of each (sample, channel) over the spatial axes; a mask (bool, shaped
    (B, 1, spatial...) or as the input) removes the pixels where it is False from every sum.
    p is the input, its sigmoid, or its softmax over the channels (axis 1). (B, C, 6) with
    REGION_WITH_BCE in the mode (logits: sigmoid only): the two BCE sums after the four."""
    dtype = compute_dtype(input, target)
    x = input.to(dtype)
    p = x
    t = target.to(dtype)
    bad = target > 1 if target.dtype == torch.uint8 else torch.zeros_like(target, dtype=torch.bool)
    if mask is not None:  # selects, so that NaN or inf under the mask (padding) stays out, gradients too
        # (the softmax of a pixel takes all its channels: only a pixel masked out in every channel
        # is replaced before it)
        p = _kept(p, mask.any(1, keepdim=True) if softmax else mask)
        t = _kept(t, mask)
        bad = bad & mask
    if sigmoid or softmax:
        p = torch.softmax(p, 1) if softmax else torch.sigmoid(p)
        if mask is not None:
            p = _kept(p, mask)
    shape: List[int] = [input.shape[0], input.shape[1], -1]
    if input.numel() == 0 or input.dim() == 2:  # reshape cannot infer -1 for 0 elements
        n = 1
        for size in input.shape[2:]:
            n *= size
        shape = [input.shape[0], input.shape[1], n]
    with_bce = mode >= 4  # REGION_WITH_BCE (TorchScript, for the jit variants, takes no globals)
    base_mode = mode - 4 if with_bce else mode
    bce_terms: List[Tensor] = []
    if with_bce:
        xs = x if mask is None else _kept(x, mask)
        a = F.binary_cross_entropy_with_logits(xs, t, reduction="none")
        b = t * F.softplus(-xs)
        if mask is not None:
            a, b = _kept(a, mask), _kept(b, mask)
        bce_terms = [a.reshape(shape).sum(2), b.reshape(shape).sum(2)]
    p = p.reshape(shape)
    t = t.reshape(shape)
    if base_mode == 2:
        s0, s1, s2 = (p - t).abs().sum(2), p.abs().sum(2), t.abs().sum(2)
    elif base_mode == 1:
        s0, s1, s2 = (p * t).sum(2), (p * p).sum(2), (t * t).sum(2)
    else:
        s0, s1, s2 = (p * t).sum(2), p.sum(2), t.sum(2)
    counted = bad.reshape(shape).sum(2).to(dtype).expand_as(s0)
    return torch.stack([s0, s1, s2, counted] + bce_terms, 2)


def _foreground(sums: Tensor, include_background: bool) -> Tensor:
    """MONAI drops channel 0 for include_background=False, unless it is the only one."""
    if not include_background and sums.shape[1] > 1:
        return sums[:, 1:]
    return sums


def _class_sums(sums: Tensor, include_background: bool, batch: bool):
    """The sums of the classes the loss counts, (B, C', 4), and what its scores take: those, or
    with batch=True their totals over the batch, (C', 4)."""
    sums = _foreground(sums, include_background)
    return sums, (sums.sum(0) if batch else sums)


def _tp_fp_fn(sums: Tensor, mode: int):
    """MONAI's compute_tp_fp_fn from the sums: true positives, false positives, false negatives."""
    tp = (sums[..., 1] + sums[..., 2] - sums[..., 0]) / 2 if mode == 2 else sums[..., 0]
    return tp, sums[..., 1] - tp, sums[..., 2] - tp


def _nan_if_bad(value: Tensor, sums: Tensor) -> Tensor:
    """NaN where a uint8 target held anything but 0 and 1 (the CPU raises before this)."""
    bad = (sums[..., 3] > 0).any()
    return torch.where(bad, torch.full_like(value, float("nan")), value)


def _reduce_region(f: Tensor, reduction: str, spatial_dims: int, broadcastable: bool) -> Tensor:
    """MONAI's reductions: "none" keeps (B, C) (or what batch=True left), made broadcastable
    against the input, (B, C, 1, ...), by Dice and generalised Dice, not by Tversky."""
    if reduction == "mean":
        return f.mean()
    if reduction == "sum":
        return f.sum()
    if broadcastable:
        shape: List[int] = list(f.shape[0:2]) + [1] * spatial_dims
        return f.view(shape)
    return f


def dice_from_sums(sums: Tensor, mode: int, include_background: bool, jaccard: bool, smooth_nr: float,
                   smooth_dr: float, batch: bool, weight: Optional[Tensor], reduction: str, spatial_dims: int,
                   out_dtype: torch.dtype) -> Tensor:
    all_sums, sums = _class_sums(sums, include_background, batch)
    tp, fp, fn = _tp_fp_fn(sums, mode)
    if not jaccard:
        fp = fp * 0.5
        fn = fn * 0.5
    f = 1 - (2 * tp + smooth_nr) / (2 * (tp + fp + fn) + smooth_dr)
    if weight is not None and sums.shape[-2] != 1:  # MONAI ignores a weight for one class
        f = f * weight.to(f)
    f = _reduce_region(_nan_if_bad(f, all_sums), reduction, spatial_dims, True)
    return f.to(out_dtype)


def tversky_from_sums(sums: Tensor, mode: int, include_background: bool, alpha: float, beta: float,
                      smooth_nr: float, smooth_dr: float, batch: bool, reduction: str, spatial_dims: int,
                      out_dtype: torch.dtype) -> Tensor:
    all_sums, sums = _class_sums(sums, include_background, batch)
    tp, fp, fn = _tp_fp_fn(sums, mode)
    score = 1.0 - (tp + smooth_nr) / (tp + alpha * fp + beta * fn + smooth_dr)
    return _reduce_region(_nan_if_bad(score, all_sums), reduction, spatial_dims, False).to(out_dtype)


def generalized_dice_from_sums(sums: Tensor, mode: int, include_background: bool, w_type: str, smooth_nr: float,
                               smooth_dr: float, batch: bool, reduction: str, spatial_dims: int,
                               out_dtype: torch.dtype) -> Tensor:
    all_sums, sums = _class_sums(sums, include_background, batch)
    tp, fp, fn = _tp_fp_fn(sums, mode)
    denominator = 2 * (tp + fp * 0.5 + fn * 0.5)
    # sum t (sum |t| with soft_label: the same for targets >= 0), in float32 as MONAI takes it
    # (ground_o.float()): its weights are float32 also for float64 input
    ground = sums[..., 2].float()
    if w_type == "simple":
        w = torch.reciprocal(ground)
    elif w_type == "square":
        w = torch.reciprocal(ground * ground)
    else:
        w = torch.ones_like(ground)
    # a class absent from the target (weight inf) takes the largest finite weight, as in MONAI
    infs = torch.isinf(w)
    w = torch.where(infs, torch.zeros_like(w), w)
    if batch:
        w = w + infs * torch.max(w)
    else:
        w = w + infs * torch.max(w, dim=1)[0].unsqueeze(dim=1)
    dim = 0 if batch else 1
    numer = 2.0 * (tp * w).sum(dim, keepdim=True) + smooth_nr
    denom = (denominator * w).sum(dim, keepdim=True) + smooth_dr
    f = 1.0 - numer / denom
    return _reduce_region(_nan_if_bad(f, all_sums), reduction, spatial_dims, True).to(out_dtype)


def check_region_mask(target: Tensor, mask: Optional[Tensor], any_device: bool = False) -> None:
    """The CPU's error for a uint8 target that holds anything but 0 and 1 where the mask keeps
    it (on another device only when any_device: there it is a host sync)."""
    if target.dtype == torch.uint8 and (any_device or target.device.type == "cpu"):
        bad = target > 1
        if mask is not None:
            bad = bad & mask
        if bool(bad.any()):
            raise RuntimeError(_mask_message())


def _check_region_target(target: Tensor, mask: Optional[Tensor]) -> None:
    if not torch.jit.is_scripting():
        if not torch.compiler.is_compiling():
            check_region_mask(target, mask)


def region_out_dtype(input: Tensor, target: Tensor) -> torch.dtype:
    """The loss's dtype: torch's result dtype of input and a float target, else the input's."""
    if target.is_floating_point():
        return torch.promote_types(input.dtype, target.dtype)
    return input.dtype


def dice_loss(input: Tensor, target: Tensor, mask: Optional[Tensor] = None, include_background: bool = True,
              sigmoid: bool = False, squared_pred: bool = False, jaccard: bool = False, reduction: str = "mean",
              smooth_nr: float = 1e-5, smooth_dr: float = 1e-5, batch: bool = False, weight: Optional[Tensor] = None,
              soft_label: bool = False, softmax: bool = False) -> Tensor:
    """monai.losses.DiceLoss over a target of the input's shape (to_onehot_y and ignore_index
    are pylosses.dice_loss's work), plus a mask."""
    _check_region_target(target, mask)
    mode = region_mode(squared_pred, soft_label)
    return dice_from_sums(region_sums(input, target, mask, sigmoid, mode, softmax), mode, include_background,
                          jaccard, smooth_nr, smooth_dr, batch, weight, reduction, input.dim() - 2, region_out_dtype(input, target))


def tversky_loss(input: Tensor, target: Tensor, mask: Optional[Tensor] = None, include_background: bool = True,
                 sigmoid: bool = False, alpha: float = 0.5, beta: float = 0.5, reduction: str = "mean",
                 smooth_nr: float = 1e-5, smooth_dr: float = 1e-5, batch: bool = False,
                 soft_label: bool = False, softmax: bool = False) -> Tensor:
    """monai.losses.TverskyLoss over a target of the input's shape (see dice_loss), plus a mask."""
    _check_region_target(target, mask)
    mode = region_mode(False, soft_label)
    return tversky_from_sums(region_sums(input, target, mask, sigmoid, mode, softmax), mode, include_background,
                             alpha, beta, smooth_nr, smooth_dr, batch, reduction, input.dim() - 2, region_out_dtype(input, target))


def generalized_dice_loss(input: Tensor, target: Tensor, mask: Optional[Tensor] = None,
                          include_background: bool = True, sigmoid: bool = False, w_type: str = "square",
                          reduction: str = "mean", smooth_nr: float = 1e-5, smooth_dr: float = 1e-5,
                          batch: bool = False, soft_label: bool = False, softmax: bool = False) -> Tensor:
    """monai.losses.GeneralizedDiceLoss over a target of the input's shape (see dice_loss), plus
    a mask."""
    _check_region_target(target, mask)
    mode = region_mode(False, soft_label)
    return generalized_dice_from_sums(region_sums(input, target, mask, sigmoid, mode, softmax), mode, include_background,
                                      w_type, smooth_nr, smooth_dr, batch, reduction, input.dim() - 2,
                                      region_out_dtype(input, target))


def masked_bce_with_logits(input: Tensor, target: Tensor, mask: Optional[Tensor], pos_weight: Optional[Tensor],
                           reduction: str) -> Tensor:
    """nn.BCEWithLogitsLoss(pos_weight=pos_weight) over the pixels the mask keeps: their mean
    ("mean"; NaN when it keeps none) or sum ("sum"), in float32 (float64 for float64)."""
    dtype = compute_dtype(input, target)
    x = input.to(dtype)
    t = target.to(dtype)
    pw: Optional[Tensor] = None
    if pos_weight is not None:
        pw = pos_weight.to(dtype)
    if mask is None:
        bce = F.binary_cross_entropy_with_logits(x, t, pos_weight=pw, reduction="none")
        return bce.mean() if reduction == "mean" else bce.sum()
    keep = mask.expand_as(x)
    bce = F.binary_cross_entropy_with_logits(_kept(x, keep), _kept(t, keep), pos_weight=pw, reduction="none")
    total = _kept(bce, keep).sum()
    return total / keep.sum() if reduction == "mean" else total


def bce_from_sums(bce_sums: Tensor, pos_weight: Optional[Tensor], count: Tensor, reduction: str) -> Tensor:
    """masked_bce_with_logits from region_sums' two BCE sums (B, C, 2) (mode + REGION_WITH_BCE):
    sum a + (w - 1) sum b for a pos_weight w of one value a channel ((C,), or None), over
    `count`, the number of elements the mask keeps, for "mean"."""
    a, b = bce_sums[..., 0], bce_sums[..., 1]
    per_channel = a if pos_weight is None else a + (pos_weight.to(a.dtype) - 1) * b
    total = per_channel.sum()
    return total / count if reduction == "mean" else total


def dice_bce_loss(input: Tensor, target: Tensor, mask: Optional[Tensor] = None, include_background: bool = True,
                  squared_pred: bool = False, jaccard: bool = False, reduction: str = "mean",
                  smooth_nr: float = 1e-5, smooth_dr: float = 1e-5, batch: bool = False,
                  weight: Optional[Tensor] = None, soft_label: bool = False, lambda_dice: float = 1.0,
                  lambda_bce: float = 1.0, lambda_tv: float = 0.0, pos_weight: Optional[Tensor] = None) -> Tensor:
    """lambda_dice * DiceLoss(sigmoid=True) + lambda_bce * BCEWithLogits(pos_weight) over the
    mask's pixels + lambda_tv * the segmentation loss's total variation of sigmoid(input) over
    the spatial axes (2 or 3 of them; the mask does not apply to it); "mean" or "sum"."""
    loss = lambda_dice * dice_loss(input, target, mask, include_background, True, squared_pred, jaccard, reduction,
                                   smooth_nr, smooth_dr, batch, weight, soft_label)
    loss = loss + lambda_bce * masked_bce_with_logits(input, target, mask, pos_weight, reduction)
    if lambda_tv != 0:
        p = torch.sigmoid(input.to(compute_dtype(input, target)))
        loss = _add_total_variation(loss, p, lambda_tv, input.dim() - 2, reduction)
    return loss.to(region_out_dtype(input, target))


def check_class_targets(target: Tensor, n_classes: int, ignore_index: Optional[int]) -> None:
    """torch's error for a class index outside [0, n_classes) that is not ignore_index (a host
    sync: the CPU's check; the kernels elsewhere give NaN, as the region losses' uint8 check)."""
    if target.numel() == 0:
        return
    low, high = torch.aminmax(target)
    if int(low) >= 0 and int(high) < n_classes:  # (one reduction: the usual case)
        return
    bad = (target < 0) | (target >= n_classes)
    if ignore_index is not None:
        bad = bad & (target != ignore_index)
    if bool(bad.any()):
        raise IndexError(f"Target {int(target[bad][0])} is out of bounds.")


def cross_entropy(input: Tensor, target: Tensor, weight: Optional[Tensor] = None, ignore_index: int = -100,
                  label_smoothing: float = 0.0, reduction: str = "mean") -> Tensor:
    """torch.nn.functional.cross_entropy for logits (B, C, spatial...) and class indices
    (B, spatial...) of any integer dtype, pixel by pixel as the kernels compute it, in float32
    (float64 for float64):

        loss_i = w[t_i] * (lse_i - x_i[t_i]) * (1 - s) + s / C * sum_c w[c] * (lse_i - x_i[c])

    with lse_i = logsumexp_c x_i[c], s = label_smoothing, w = weight or ones, and loss_i = 0
    where t_i == ignore_index. "mean" divides the sum by sum_i w[t_i] over the pixels not
    ignored (torch's denominator, also for the smoothing term; NaN when it is 0: every pixel
    ignored, or weights of 0)."""
    if not torch.jit.is_scripting():
        if not torch.compiler.is_compiling() and target.device.type == "cpu":
            check_class_targets(target, input.shape[1], ignore_index)
    dtype = torch.float64 if input.dtype == torch.float64 else torch.float32
    x = input.to(dtype)
    n_classes = x.shape[1]
    t = target.long()
    ignored = t == ignore_index
    # an ignored pixel's logits may be inf or NaN (padding): read as 0, so that its loss and
    # gradient are 0 (a weight of 0 times NaN would be NaN): torch's loss is 0 there too, its
    # gradient NaN at a NaN or +inf logit (README)
    x = torch.where(ignored.unsqueeze(1), torch.zeros((), dtype=dtype, device=x.device), x)
    t = torch.where(ignored, torch.zeros_like(t), t).unsqueeze(1)
    w = torch.ones(n_classes, dtype=dtype, device=x.device) if weight is None else weight.to(dtype)
    w = w.view([1, n_classes] + [1] * (x.dim() - 2))
    minus_logp = torch.logsumexp(x, 1, keepdim=True) - x
    w_t = torch.where(ignored, torch.zeros((), dtype=dtype, device=x.device),
                      w.expand_as(x).gather(1, t).squeeze(1))
    loss = (1 - label_smoothing) * w_t * minus_logp.gather(1, t).squeeze(1)
    if label_smoothing != 0:
        smooth = (w * minus_logp).sum(1)
        loss = loss + label_smoothing / n_classes * torch.where(ignored, torch.zeros_like(smooth), smooth)
    if reduction == "mean":
        # torch divides its two terms by D apart: with D = 0 the label's is 0 / 0, NaN, and so the
        # loss, where one division of their sum would give inf from the smoothing's. Its gradient
        # is 0 when no pixel counts (a division by 1 then), and not finite where pixels count
        # but weigh 0 (a division by 0), as torch's.
        denominator = w_t.sum()
        counted = (~ignored).any()
        divisor = torch.where(counted, denominator, torch.ones_like(denominator))
        loss = torch.where(denominator == 0, torch.full_like(denominator, float("nan")), loss.sum() / divisor)
    elif reduction == "sum":
        loss = loss.sum()
    return loss.to(input.dtype)


_LOSSES: Dict[str, Callable] = {"mse_loss": mse_loss, "segmentation_loss": segmentation_loss, "dice_loss": dice_loss,
                                "tversky_loss": tversky_loss, "generalized_dice_loss": generalized_dice_loss,
                                "dice_bce_loss": dice_bce_loss, "cross_entropy": cross_entropy}
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
