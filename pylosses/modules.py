"""nn.Module wrappers: configuration only; the work is in pylosses.functional."""

from typing import Optional

import torch
from torch import Tensor
from torch.nn.modules.loss import _Loss, _WeightedLoss

from . import functional as F


class MSELoss(_Loss):
    """Mean squared error, as torch.nn.MSELoss (input and target of the same shape)."""

    def __init__(self, reduction: str = "mean", backend: str = "auto") -> None:
        F._check_options(reduction, backend)
        super().__init__(reduction=reduction)
        self.backend = backend

    @torch.jit.unused
    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.mse_loss(input, target, reduction=self.reduction, backend=self.backend)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}, backend={self.backend!r}"


class SegmentationLoss(_Loss):
    """alpha * BCE + beta * total-variation smoothness; see pylosses.segmentation_loss."""

    def __init__(
        self,
        alpha: float = 0.7,
        beta: float = 0.3,
        from_logits: bool = False,
        spatial_dims: int = 2,
        reduction: str = "mean",
        backend: str = "auto",
    ) -> None:
        F._check_options(reduction, backend)
        F._check_seg_options(alpha, beta, from_logits, spatial_dims)
        super().__init__(reduction=reduction)
        self.alpha = alpha
        self.beta = beta
        self.from_logits = from_logits
        self.spatial_dims = spatial_dims
        self.backend = backend

    @torch.jit.unused
    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.segmentation_loss(
            input, target, alpha=self.alpha, beta=self.beta, from_logits=self.from_logits,
            spatial_dims=self.spatial_dims, reduction=self.reduction, backend=self.backend,
        )

    def extra_repr(self) -> str:
        return (
            f"alpha={self.alpha}, beta={self.beta}, from_logits={self.from_logits}, "
            f"spatial_dims={self.spatial_dims}, reduction={self.reduction!r}, backend={self.backend!r}"
        )


class _RegionLoss(_Loss):
    """MONAI's region-loss modules: the same constructor arguments, in the same order; forward
    takes an optional mask (pylosses.dice_loss)."""

    def extra_repr(self) -> str:
        return ", ".join(f"{name}={getattr(self, name)!r}" for name in self._shown)


class DiceLoss(_RegionLoss):
    """monai.losses.DiceLoss, fused (pylosses.dice_loss); the class weights are the buffer
    class_weight, as MONAI's."""

    _shown = ("include_background", "to_onehot_y", "sigmoid", "softmax", "squared_pred", "jaccard", "reduction",
              "smooth_nr", "smooth_dr", "batch", "soft_label", "ignore_index", "backend")

    def __init__(self, include_background: bool = True, to_onehot_y: bool = False, sigmoid: bool = False,
                 softmax: bool = False, other_act=None, squared_pred: bool = False, jaccard: bool = False,
                 reduction: str = "mean", smooth_nr: float = 1e-5, smooth_dr: float = 1e-5, batch: bool = False,
                 weight=None, soft_label: bool = False, ignore_index=None, backend: str = "auto") -> None:
        reduction = F._check_region_options(
            to_onehot_y, softmax, other_act, ignore_index, reduction, backend, smooth_nr, smooth_dr, sigmoid,
            include_background=include_background, squared_pred=squared_pred, jaccard=jaccard, batch=batch,
            soft_label=soft_label)
        super().__init__(reduction=reduction)
        self.include_background, self.sigmoid, self.squared_pred, self.jaccard = (include_background, sigmoid,
                                                                                  squared_pred, jaccard)
        self.to_onehot_y, self.softmax, self.ignore_index = to_onehot_y, softmax, ignore_index
        self.smooth_nr, self.smooth_dr, self.batch, self.soft_label = float(smooth_nr), float(smooth_dr), batch, soft_label
        self.backend = backend
        self.register_buffer("class_weight", F._class_weight(weight))

    @torch.jit.unused
    def forward(self, input: Tensor, target: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        return F.dice_loss(input, target, include_background=self.include_background, to_onehot_y=self.to_onehot_y,
                           sigmoid=self.sigmoid, softmax=self.softmax, ignore_index=self.ignore_index,
                           squared_pred=self.squared_pred, jaccard=self.jaccard, reduction=self.reduction,
                           smooth_nr=self.smooth_nr, smooth_dr=self.smooth_dr, batch=self.batch,
                           weight=self.class_weight, soft_label=self.soft_label, mask=mask, backend=self.backend)


class TverskyLoss(_RegionLoss):
    """monai.losses.TverskyLoss, fused (pylosses.tversky_loss)."""

    _shown = ("include_background", "to_onehot_y", "sigmoid", "softmax", "alpha", "beta", "reduction", "smooth_nr",
              "smooth_dr", "batch", "soft_label", "ignore_index", "backend")

    def __init__(self, include_background: bool = True, to_onehot_y: bool = False, sigmoid: bool = False,
                 softmax: bool = False, other_act=None, alpha: float = 0.5, beta: float = 0.5,
                 reduction: str = "mean", smooth_nr: float = 1e-5, smooth_dr: float = 1e-5, batch: bool = False,
                 soft_label: bool = False, ignore_index=None, backend: str = "auto") -> None:
        reduction = F._check_region_options(
            to_onehot_y, softmax, other_act, ignore_index, reduction, backend, smooth_nr, smooth_dr, sigmoid,
            include_background=include_background, batch=batch, soft_label=soft_label)
        F._check_weight("alpha", alpha)
        F._check_weight("beta", beta)
        super().__init__(reduction=reduction)
        self.include_background, self.sigmoid, self.alpha, self.beta = include_background, sigmoid, alpha, beta
        self.to_onehot_y, self.softmax, self.ignore_index = to_onehot_y, softmax, ignore_index
        self.smooth_nr, self.smooth_dr, self.batch, self.soft_label = float(smooth_nr), float(smooth_dr), batch, soft_label
        self.backend = backend

    @torch.jit.unused
    def forward(self, input: Tensor, target: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        return F.tversky_loss(input, target, include_background=self.include_background, to_onehot_y=self.to_onehot_y,
                              sigmoid=self.sigmoid, softmax=self.softmax, ignore_index=self.ignore_index,
                              alpha=self.alpha, beta=self.beta, reduction=self.reduction, smooth_nr=self.smooth_nr,
                              smooth_dr=self.smooth_dr, batch=self.batch, soft_label=self.soft_label, mask=mask,
                              backend=self.backend)


class GeneralizedDiceLoss(_RegionLoss):
    """monai.losses.GeneralizedDiceLoss, fused (pylosses.generalized_dice_loss)."""

    _shown = ("include_background", "to_onehot_y", "sigmoid", "softmax", "w_type", "reduction", "smooth_nr",
              "smooth_dr", "batch", "soft_label", "backend")

    def __init__(self, include_background: bool = True, to_onehot_y: bool = False, sigmoid: bool = False,
                 softmax: bool = False, other_act=None, w_type: str = "square", reduction: str = "mean",
                 smooth_nr: float = 1e-5, smooth_dr: float = 1e-5, batch: bool = False, soft_label: bool = False,
                 backend: str = "auto") -> None:
        reduction = F._check_region_options(
            to_onehot_y, softmax, other_act, None, reduction, backend, smooth_nr, smooth_dr, sigmoid,
            include_background=include_background, batch=batch, soft_label=soft_label)
        w_type = getattr(w_type, "value", w_type)
        F._check_choice("w_type", w_type, F.W_TYPES)
        super().__init__(reduction=reduction)
        self.include_background, self.sigmoid, self.w_type = include_background, sigmoid, w_type
        self.to_onehot_y, self.softmax = to_onehot_y, softmax
        self.smooth_nr, self.smooth_dr, self.batch, self.soft_label = float(smooth_nr), float(smooth_dr), batch, soft_label
        self.backend = backend

    @torch.jit.unused
    def forward(self, input: Tensor, target: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        return F.generalized_dice_loss(input, target, include_background=self.include_background,
                                       to_onehot_y=self.to_onehot_y, sigmoid=self.sigmoid, softmax=self.softmax,
                                       w_type=self.w_type, reduction=self.reduction,
                                       smooth_nr=self.smooth_nr, smooth_dr=self.smooth_dr, batch=self.batch,
                                       soft_label=self.soft_label, mask=mask, backend=self.backend)


class DiceBCELoss(_RegionLoss):
    """lambda_dice * Dice(sigmoid) + lambda_bce * BCE with logits (pos_weight) + lambda_tv * total
    variation, on logits (pylosses.dice_bce_loss). The class weights (Dice) and pos_weight (BCE)
    are the buffers class_weight and pos_weight."""

    _shown = ("include_background", "squared_pred", "jaccard", "reduction", "smooth_nr", "smooth_dr", "batch",
              "soft_label", "lambda_dice", "lambda_bce", "lambda_tv", "backend")

    def __init__(self, include_background: bool = True, squared_pred: bool = False, jaccard: bool = False,
                 reduction: str = "mean", smooth_nr: float = 1e-5, smooth_dr: float = 1e-5, batch: bool = False,
                 weight=None, soft_label: bool = False, lambda_dice: float = 1.0, lambda_bce: float = 1.0,
                 lambda_tv: float = 0.0, pos_weight=None, backend: str = "auto") -> None:
        reduction = F._check_region_options(
            False, False, None, None, reduction, backend, smooth_nr, smooth_dr, include_background=include_background,
            squared_pred=squared_pred, jaccard=jaccard, batch=batch, soft_label=soft_label)
        F._check_combined("DiceBCELoss", reduction, lambda_dice=lambda_dice, lambda_bce=lambda_bce, lambda_tv=lambda_tv)
        super().__init__(reduction=reduction)
        self.include_background, self.squared_pred, self.jaccard = include_background, squared_pred, jaccard
        self.smooth_nr, self.smooth_dr, self.batch, self.soft_label = float(smooth_nr), float(smooth_dr), batch, soft_label
        self.lambda_dice, self.lambda_bce, self.lambda_tv = lambda_dice, lambda_bce, lambda_tv
        self.backend = backend
        self.register_buffer("class_weight", F._class_weight(weight))
        # as torch's BCEWithLogitsLoss keeps it: any shape that broadcasts against the input
        self.register_buffer("pos_weight", F._pos_weight_tensor(pos_weight))

    @torch.jit.unused
    def forward(self, input: Tensor, target: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        return F.dice_bce_loss(input, target, include_background=self.include_background,
                               squared_pred=self.squared_pred, jaccard=self.jaccard, reduction=self.reduction,
                               smooth_nr=self.smooth_nr, smooth_dr=self.smooth_dr, batch=self.batch,
                               weight=self.class_weight, soft_label=self.soft_label, lambda_dice=self.lambda_dice,
                               lambda_bce=self.lambda_bce, lambda_tv=self.lambda_tv, pos_weight=self.pos_weight,
                               mask=mask, backend=self.backend)


class DiceCELoss(_RegionLoss):
    """monai.losses.DiceCELoss (pylosses.dice_ce_loss), plus ignore_index and lambda_tv; the class
    weights are the buffer class_weight."""

    _shown = ("include_background", "to_onehot_y", "sigmoid", "softmax", "squared_pred", "jaccard", "reduction",
              "smooth_nr", "smooth_dr", "batch", "lambda_dice", "lambda_ce", "label_smoothing", "ignore_index",
              "lambda_tv", "backend")

    def __init__(self, include_background: bool = True, to_onehot_y: bool = False, sigmoid: bool = False,
                 softmax: bool = False, other_act=None, squared_pred: bool = False, jaccard: bool = False,
                 reduction: str = "mean", smooth_nr: float = 1e-5, smooth_dr: float = 1e-5, batch: bool = False,
                 weight=None, lambda_dice: float = 1.0, lambda_ce: float = 1.0, label_smoothing: float = 0.0,
                 ignore_index=None, lambda_tv: float = 0.0, backend: str = "auto") -> None:
        reduction = F._check_region_options(
            to_onehot_y, softmax, other_act, ignore_index, reduction, backend, smooth_nr, smooth_dr, sigmoid,
            include_background=include_background, squared_pred=squared_pred, jaccard=jaccard, batch=batch)
        F._check_combined("DiceCELoss", reduction, lambda_dice=lambda_dice, lambda_ce=lambda_ce, lambda_tv=lambda_tv)
        F._check_label_smoothing(label_smoothing)
        super().__init__(reduction=reduction)
        self.include_background, self.to_onehot_y, self.sigmoid, self.softmax = (include_background, to_onehot_y,
                                                                                 sigmoid, softmax)
        self.squared_pred, self.jaccard, self.batch = squared_pred, jaccard, batch
        self.smooth_nr, self.smooth_dr = float(smooth_nr), float(smooth_dr)
        self.lambda_dice, self.lambda_ce, self.lambda_tv = lambda_dice, lambda_ce, lambda_tv
        self.label_smoothing, self.ignore_index, self.backend = label_smoothing, ignore_index, backend
        self.register_buffer("class_weight", F._class_weight(weight))

    @torch.jit.unused
    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.dice_ce_loss(input, target, self.include_background, self.to_onehot_y, self.sigmoid, self.softmax,
                              None, self.squared_pred, self.jaccard, self.reduction, self.smooth_nr, self.smooth_dr,
                              self.batch, self.class_weight, self.lambda_dice, self.lambda_ce, self.label_smoothing,
                              self.ignore_index, self.lambda_tv, self.backend)


class CrossEntropyLoss(_WeightedLoss):
    """torch.nn.CrossEntropyLoss for logits (B, C, spatial...) and class-index maps (int64, int32 or
    uint8); see pylosses.cross_entropy. weight is a buffer, as torch's (it moves with .to())."""

    def __init__(self, weight: Optional[Tensor] = None, *, ignore_index: int = -100, reduction: str = "mean",
                 label_smoothing: float = 0.0, backend: str = "auto") -> None:
        F._check_options(reduction, backend)
        if weight is not None and not isinstance(weight, Tensor):
            raise TypeError(f"weight must be a torch.Tensor or None, got {type(weight).__name__}")
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
            raise TypeError(f"ignore_index must be an int, got {type(ignore_index).__name__} {ignore_index!r}")
        F._check_label_smoothing(label_smoothing)
        super().__init__(weight, reduction=reduction)
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing
        self.backend = backend

    @torch.jit.unused
    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(input, target, self.weight, ignore_index=self.ignore_index, reduction=self.reduction,
                               label_smoothing=self.label_smoothing, backend=self.backend)

    def extra_repr(self) -> str:
        return (f"ignore_index={self.ignore_index}, reduction={self.reduction!r}, "
                f"label_smoothing={self.label_smoothing}, backend={self.backend!r}")
