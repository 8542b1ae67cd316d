"""Hungarian matching of a query-target cost matrix, the one-to-one assignment of both DETR heads.

A wrapper of scipy's `linear_sum_assignment` (the solver mmdet's and Detectron2-Mask2Former's
`HungarianMatcher` call) that takes a torch cost, solves on the CPU in float32, and returns index
tensors on the cost's device; an empty matrix gives empty indices. scipy.optimize is imported on
the first call (over a second on a busy machine), not by every process that imports
``soma_d2.layers`` to build a backbone.
"""
from __future__ import annotations

import torch

__all__ = ["hungarian_match"]


@torch.no_grad()
def hungarian_match(cost: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimum-cost one-to-one assignment (row indices, column indices) of a (Q, G) cost matrix."""
    if cost.numel() == 0:
        empty = torch.zeros(0, dtype=torch.long, device=cost.device)
        return empty, empty
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(cost.detach().float().cpu().numpy())
    return (torch.as_tensor(rows, dtype=torch.long, device=cost.device),
            torch.as_tensor(cols, dtype=torch.long, device=cost.device))
