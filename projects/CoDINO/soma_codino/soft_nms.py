"""Class-aware linear soft-NMS (mmcv `soft_nms` + `batched_nms` semantics); torchvision has none.

Co-DINO's test-time post-processing keeps the top 300 (score, class, box) triples of the last
decoder layer and decays, rather than removes, overlapping boxes of the same class: each round
takes the highest remaining score, and every other box of its class with IoU above the threshold
has its score multiplied by (1 - IoU); boxes whose score falls below `min_score` are dropped.
"""
from __future__ import annotations

import torch
from torchvision.ops import box_iou

__all__ = ["batched_soft_nms", "soft_nms"]


def soft_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float = 0.8,
             sigma: float = 0.5, min_score: float = 1e-3, method: str = "linear"
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft-NMS over one set of boxes (N, 4) xyxy; returns (kept indices, decayed scores) in the
    order of selection (non-increasing score). method: linear | gaussian (sigma) | naive (hard)."""
    if method not in ("linear", "gaussian", "naive"):
        raise ValueError(f"soft_nms method={method!r}; accepted: linear, gaussian, naive")
    scores = scores.clone().float()
    iou = box_iou(boxes.float(), boxes.float())
    alive = torch.ones_like(scores, dtype=torch.bool)
    keep, kept_scores = [], []
    for _ in range(len(scores)):
        masked = torch.where(alive, scores, scores.new_full((), -1.0))
        best = int(masked.argmax())
        if not alive[best] or scores[best] < min_score:
            break
        keep.append(best)
        kept_scores.append(scores[best].clone())
        alive[best] = False
        overlap = iou[best]
        if method == "linear":
            decay = torch.where(overlap > iou_threshold, 1 - overlap, torch.ones_like(overlap))
        elif method == "gaussian":
            decay = torch.exp(-(overlap * overlap) / sigma)
        else:
            decay = torch.where(overlap > iou_threshold, torch.zeros_like(overlap),
                                torch.ones_like(overlap))
        scores = torch.where(alive, scores * decay, scores)
        alive &= scores >= min_score
    index = torch.as_tensor(keep, dtype=torch.long, device=boxes.device)
    out = torch.stack(kept_scores) if kept_scores else scores.new_zeros(0)
    return index, out


def batched_soft_nms(boxes: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor,
                     iou_threshold: float = 0.8, sigma: float = 0.5, min_score: float = 1e-3,
                     max_num: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
    """Class-aware soft-NMS by the coordinate-offset trick (classes never overlap); returns
    (indices, decayed scores) sorted by decayed score, at most `max_num` (-1 = all)."""
    if boxes.numel() == 0:
        return boxes.new_zeros(0, dtype=torch.long), scores.new_zeros(0)
    offset = classes.to(boxes) * (boxes.max() + 1)
    index, new_scores = soft_nms(boxes + offset[:, None], scores, iou_threshold, sigma, min_score)
    order = new_scores.argsort(descending=True, stable=True)
    index, new_scores = index[order], new_scores[order]
    if max_num > 0:
        index, new_scores = index[:max_num], new_scores[:max_num]
    return index, new_scores
