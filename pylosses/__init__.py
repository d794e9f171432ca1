"""pylosses: fused, hand-written loss kernels for PyTorch (see README.md and DESIGN.md)."""

from . import reference
from ._env import collect_env
from ._version import __version__
from .functional import (available_backends, cross_entropy, dice_bce_loss, dice_ce_loss, dice_loss,
                         generalized_dice_loss, input_checks_enabled, mse_loss, segmentation_loss, set_input_checks,
                         tversky_loss)
from .modules import (CrossEntropyLoss, DiceBCELoss, DiceCELoss, DiceLoss, GeneralizedDiceLoss, MSELoss,
                      SegmentationLoss, TverskyLoss)

__all__ = [
    "CrossEntropyLoss",
    "cross_entropy",
    "DiceBCELoss",
    "dice_bce_loss",
    "DiceCELoss",
    "dice_ce_loss",
    "DiceLoss",
    "GeneralizedDiceLoss",
    "TverskyLoss",
    "dice_loss",
    "generalized_dice_loss",
    "tversky_loss",
    "MSELoss",
    "SegmentationLoss",
    "available_backends",
    "collect_env",
    "input_checks_enabled",
    "mse_loss",
    "reference",
    "segmentation_loss",
    "set_input_checks",
]
