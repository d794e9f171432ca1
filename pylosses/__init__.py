"""pylosses: fused, hand-written loss kernels for PyTorch (see README.md and DESIGN.md)."""

from . import reference
from .functional import available_backends, input_checks_enabled, mse_loss, segmentation_loss, set_input_checks
from .modules import MSELoss, SegmentationLoss

__version__ = "0.1.0"

__all__ = [
    "MSELoss",
    "SegmentationLoss",
    "available_backends",
    "input_checks_enabled",
    "mse_loss",
    "reference",
    "segmentation_loss",
    "set_input_checks",
]
