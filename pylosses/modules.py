"""nn.Module wrappers: configuration only; the work is in pylosses.functional."""

from torch import Tensor
from torch.nn.modules.loss import _Loss

from . import functional as F


class MSELoss(_Loss):
    """Mean squared error, as torch.nn.MSELoss (input and target of the same shape)."""

    def __init__(self, reduction: str = "mean", backend: str = "auto") -> None:
        F._check_options(reduction, backend)
        super().__init__(reduction=reduction)
        self.backend = backend

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
