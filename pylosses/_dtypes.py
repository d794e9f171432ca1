"""dtype rules that the ops and every backend's launchers share."""

import torch


def saved_grad_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a gradient is kept in between forward and backward: float16's range cannot
    hold it (BCE's grows as 1/p, and 1/N can fall below float16's normal numbers), so float32."""
    return torch.float32 if dtype == torch.float16 else dtype
