"""pylosses: fused, hand-written loss kernels for PyTorch (see README.md and DESIGN.md)."""

from . import reference
from ._env import collect_env
from ._version import __version__
from .functional import available_backends, input_checks_enabled, mse_loss, segmentation_loss, set_input_checks
from .modules import MSELoss, SegmentationLoss

__all__ = [
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
