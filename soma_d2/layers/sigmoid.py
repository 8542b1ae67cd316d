"""`inverse_sigmoid`: the logit of a normalised box, how DETR heads refine boxes in logit space."""
from __future__ import annotations

import torch

__all__ = ["inverse_sigmoid"]


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """logit(x) with x clamped to [0, 1] and both x and 1 - x floored at eps (mmdet semantics)."""
    x = x.clamp(0, 1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))
