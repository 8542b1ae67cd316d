"""DETR-side losses and the matching cost of Co-DINO (official: loss_cls QualityFocalLoss beta 2.0,
loss_bbox L1 5.0, loss_iou GIoU 2.0 and train_cfg[0] HungarianAssigner in
DGOD/configs/_base_/models/dinov2_codetr.py; DGOD/mmdet/models/dense_heads/detr_head.py).

Quality focal loss (the classification target of a matched query is the IoU of its detached box
with the ground truth), L1 on normalised (cx, cy, w, h) and GIoU on canvas pixels, with the
matching costs FocalLossCost / L1 / GIoU (solved by soma_d2's `hungarian_match`). Box helpers
are torchvision's; only the QFL formula and the focal matching cost are written here.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import box_convert, generalized_box_iou, generalized_box_iou_loss
from torchvision.ops import sigmoid_focal_loss as tv_sigmoid_focal_loss

__all__ = [
    "cxcywh_to_xyxy",
    "match_cost",
    "quality_focal_loss",
    "sigmoid_focal_loss",
    "detr_losses",
]


def cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    return box_convert(boxes, "cxcywh", "xyxy")


def quality_focal_loss(logits: torch.Tensor, labels: torch.Tensor, scores: torch.Tensor,
                       beta: float = 2.0) -> torch.Tensor:
    """Per-sample QFL summed over classes: logits (N, C), labels (N,) with C = background,
    scores (N,) the IoU targets of the positives (ignored elsewhere)."""
    prob = logits.sigmoid()
    loss = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits),
                                              reduction="none") * prob.pow(beta)
    num_classes = logits.shape[1]
    pos = torch.nonzero((labels >= 0) & (labels < num_classes)).squeeze(1)
    if pos.numel():
        pos_labels = labels[pos]
        target = scores[pos].to(logits.dtype)
        scale = (target - prob[pos, pos_labels]).abs().pow(beta)
        loss = loss.clone()
        loss[pos, pos_labels] = F.binary_cross_entropy_with_logits(
            logits[pos, pos_labels], target, reduction="none") * scale
    return loss.sum(dim=1)


def sigmoid_focal_loss(logits: torch.Tensor, labels: torch.Tensor, alpha: float = 0.25,
                       gamma: float = 2.0) -> torch.Tensor:
    """Sigmoid focal loss summed over classes per sample; labels == C means background."""
    num_classes = logits.shape[1]
    onehot = F.one_hot(labels.clamp(max=num_classes), num_classes + 1)[:, :num_classes]
    return tv_sigmoid_focal_loss(logits, onehot.to(logits.dtype), alpha=alpha, gamma=gamma,
                    reduction="none").sum(1)


def match_cost(logits: torch.Tensor, boxes: torch.Tensor, gt_labels: torch.Tensor,
               gt_boxes: torch.Tensor, canvas: tuple[int, int], weights: tuple[float, float, float],
               alpha: float = 0.25, gamma: float = 2.0, eps: float = 1e-12) -> torch.Tensor:
    """Cost matrix (Q, G): FocalLossCost + L1 (normalised cxcywh) + negative GIoU (pixels)."""
    w_cls, w_l1, w_giou = weights
    prob = logits.sigmoid()
    neg = -(1 - prob + eps).log() * (1 - alpha) * prob.pow(gamma)
    pos = -(prob + eps).log() * alpha * (1 - prob).pow(gamma)
    cost_cls = (pos - neg)[:, gt_labels]
    cost_l1 = torch.cdist(boxes, gt_boxes, p=1)
    scale = boxes.new_tensor([canvas[1], canvas[0], canvas[1], canvas[0]])
    cost_giou = -generalized_box_iou(cxcywh_to_xyxy(boxes) * scale,
                                     cxcywh_to_xyxy(gt_boxes) * scale)
    return w_cls * cost_cls + w_l1 * cost_l1 + w_giou * cost_giou


def detr_losses(logits: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor,
                target_boxes: torch.Tensor, box_weights: torch.Tensor, canvas: tuple[int, int],
                weights: tuple[float, float, float], num_pos: float) -> dict[str, torch.Tensor]:
    """QFL / L1 / GIoU over flat queries: logits (N, C), boxes (N, 4) normalised cxcywh, labels
    (N,) with C = background, target boxes (N, 4), box weights (N,) 1 for positives; sums are
    divided by `num_pos` (min 1)."""
    w_cls, w_l1, w_giou = weights
    num_pos = max(float(num_pos), 1.0)
    scale = boxes.new_tensor([canvas[1], canvas[0], canvas[1], canvas[0]])
    pos = box_weights > 0
    scores = torch.zeros_like(box_weights)
    if pos.any():
        pred_xyxy = cxcywh_to_xyxy(boxes[pos].detach()) * scale
        gt_xyxy = cxcywh_to_xyxy(target_boxes[pos]) * scale
        scores[pos] = _aligned_iou(pred_xyxy, gt_xyxy)
    loss_cls = quality_focal_loss(logits, labels, scores).sum() / num_pos
    if pos.any():
        loss_l1 = (boxes[pos] - target_boxes[pos]).abs().sum() / num_pos
        loss_giou = generalized_box_iou_loss(cxcywh_to_xyxy(boxes[pos]) * scale,
                                             cxcywh_to_xyxy(target_boxes[pos]) * scale,
                                             reduction="sum") / num_pos
    else:
        loss_l1 = boxes.sum() * 0.0
        loss_giou = boxes.sum() * 0.0
    return {"cls": w_cls * loss_cls, "bbox": w_l1 * loss_l1, "giou": w_giou * loss_giou}


def _aligned_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    lt = torch.max(a[:, :2], b[:, :2])
    rb = torch.min(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(1)
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(1)
    return inter / (area_a + area_b - inter).clamp(min=1e-6)
