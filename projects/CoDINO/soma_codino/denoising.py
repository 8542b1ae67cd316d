"""Contrastive denoising (DINO's CDN) queries, with mmdet's `CdnQueryGenerator` semantics.

Each DN group holds one positive and one negative noised copy of every ground-truth box of an
image; the number of groups adapts to the crowdest image of the batch (max(1, N_dn // max #GT)).
Positives are shifted by less than half their size (|r| < 1), negatives by between one and two
half-sizes (1 <= |r| < 2), so the decoder learns both to reconstruct a box and to reject a near
miss. The attention mask keeps groups independent and hides all DN queries from the matching
queries (which must not see the answers), while DN queries may look at the matching queries.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torchvision.ops import box_convert

from soma_d2.layers import inverse_sigmoid

__all__ = ["DNMeta", "DenoisingGenerator", "dn_attention_mask", "dn_targets"]


@dataclass
class DNMeta:
    """Layout of the DN part: `num_queries` = 2 * groups * max_gt, before the matching queries."""

    num_queries: int
    num_groups: int
    max_gt: int


def dn_attention_mask(num_dn: int, num_groups: int, num_matching: int,
                      device: torch.device | None = None) -> torch.Tensor:
    """Boolean (T, T) mask, True = blocked, T = num_dn + num_matching (DN first)."""
    total = num_dn + num_matching
    mask = torch.zeros(total, total, dtype=torch.bool, device=device)
    mask[num_dn:, :num_dn] = True
    per_group = num_dn // max(num_groups, 1)
    for g in range(num_groups):
        lo, hi = g * per_group, (g + 1) * per_group
        mask[lo:hi, :lo] = True
        mask[lo:hi, hi:num_dn] = True
    return mask


class DenoisingGenerator(nn.Module):
    """Builds DN content queries (label embeddings), noised reference boxes and the mask."""

    def __init__(self, num_classes: int, embed_dim: int, num_dn_queries: int = 100,
                 label_noise_scale: float = 0.5, box_noise_scale: float = 1.0):
        super().__init__()
        self.num_classes = num_classes
        self.num_dn_queries = num_dn_queries
        self.label_noise_scale = label_noise_scale
        self.box_noise_scale = box_noise_scale
        self.label_embedding = nn.Embedding(num_classes, embed_dim)

    def num_groups(self, max_gt: int) -> int:
        return 1 if max_gt == 0 else max(1, self.num_dn_queries // max_gt)

    def noise(self, labels: torch.Tensor, boxes_xyxy: torch.Tensor, num_groups: int
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Noised labels and boxes for 2 * num_groups copies of one image's GT, in slot order
        (group g: positives then negatives); returns (labels, xyxy boxes in [0, 1], r factors)."""
        n = len(labels)
        labels = labels.repeat(2 * num_groups)
        boxes = boxes_xyxy.repeat(2 * num_groups, 1)
        if self.label_noise_scale > 0:
            flip = torch.rand(len(labels), device=labels.device) < self.label_noise_scale * 0.5
            random_labels = torch.randint_like(labels, 0, self.num_classes)
            labels = torch.where(flip, random_labels, labels)
        negative = torch.zeros(2 * num_groups, n, dtype=torch.bool, device=boxes.device)
        negative[1::2] = True
        negative = negative.flatten()
        r = torch.rand_like(boxes)
        r[negative] += 1.0
        r = r * (torch.randint_like(boxes, 0, 2) * 2.0 - 1.0)
        wh = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)
        if self.box_noise_scale > 0:
            boxes = boxes + r * wh * self.box_noise_scale / 2
        return labels, boxes.clamp(0.0, 1.0), r

    def forward(self, gt_labels: list[torch.Tensor], gt_boxes_cxcywh: list[torch.Tensor],
                num_matching: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, DNMeta]:
        """DN content (B, D, C), DN reference logits (B, D, 4) (inverse-sigmoid cxcywh), the
        (D + num_matching)^2 attention mask and the layout, for GT normalised to the canvas."""
        batch = len(gt_labels)
        max_gt = max((len(x) for x in gt_labels), default=0)
        groups = self.num_groups(max_gt)
        num_dn = 2 * groups * max_gt
        weight = self.label_embedding.weight
        content = weight.new_zeros(batch, num_dn, weight.shape[1])
        refs = weight.new_zeros(batch, num_dn, 4)
        for i, (labels, boxes) in enumerate(zip(gt_labels, gt_boxes_cxcywh)):
            n = len(labels)
            if n == 0:
                continue
            noisy_labels, noisy_boxes, _ = self.noise(
                labels, box_convert(boxes, "cxcywh", "xyxy"), groups)
            slots = dn_slots(n, max_gt, 2 * groups, labels.device)
            content[i, slots] = self.label_embedding(noisy_labels)
            refs[i, slots] = inverse_sigmoid(box_convert(noisy_boxes, "xyxy", "cxcywh"))
        mask = dn_attention_mask(num_dn, groups, num_matching, weight.device)
        return content, refs, mask, DNMeta(num_dn, groups, max_gt)


def dn_slots(n: int, max_gt: int, num_blocks: int, device: torch.device) -> torch.Tensor:
    """Slot of copy (block b, gt j) = b * max_gt + j: blocks alternate positive / negative."""
    return (torch.arange(num_blocks, device=device)[:, None] * max_gt
            + torch.arange(n, device=device)[None]).flatten()


def dn_targets(meta: DNMeta, gt_labels: torch.Tensor, gt_boxes: torch.Tensor, num_classes: int
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fixed targets of one image's DN queries: positives reconstruct their GT, negatives and
    padding are background. Returns labels (D,), boxes (D, 4) and box weights (D,)."""
    d = meta.num_queries
    labels = torch.full((d,), num_classes, dtype=torch.long, device=gt_boxes.device)
    boxes = gt_boxes.new_zeros(d, 4)
    weights = gt_boxes.new_zeros(d)
    n = len(gt_labels)
    if n:
        pos = (torch.arange(meta.num_groups, device=gt_boxes.device)[:, None] * 2 * meta.max_gt
               + torch.arange(n, device=gt_boxes.device)[None]).flatten()
        labels[pos] = gt_labels.repeat(meta.num_groups)
        boxes[pos] = gt_boxes.repeat(meta.num_groups, 1)
        weights[pos] = 1.0
    return labels, boxes, weights
