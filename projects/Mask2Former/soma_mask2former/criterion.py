"""Mask2Former's matching and losses on point samples (mmdet `Mask2FormerHead.loss_by_feat`).

Per image, every class present in the label map (ignore excluded) is one target mask. The Hungarian
matcher (scipy `linear_sum_assignment`) costs `class_weight` x (-softmax prob of the target class)
+ `mask_weight` x mean BCE + `dice_weight` x dice, the mask terms on `num_points` uniformly random
points shared by predictions and targets. Losses: CE over all queries with the no-object class
weighted `no_object_weight` (normalised by the summed class weights), and on the matched pairs BCE
and dice (sigmoid, +1 smoothing) at `num_points` points per mask picked by importance sampling
(`oversample_ratio` x candidates, `importance_sample_ratio` of them at the most uncertain logits,
the rest uniform), both normalised by the number of target masks (averaged over processes).
Detectron2's PointRend `point_sample` / `get_uncertain_point_coords_with_randomness` do the
sampling. Names follow Detectron2's Mask2Former: `loss_ce`, `loss_mask`, `loss_dice` for the last
prediction, `loss_*_<i>` for the intermediate ones (i = 0 is the initial queries' prediction).
"""
from __future__ import annotations

import torch
from detectron2.projects.point_rend.point_features import (
    get_uncertain_point_coords_with_randomness,
    point_sample,
)
from detectron2.utils import comm
from torch import nn
from torch.nn import functional as F

from soma_d2.layers import hungarian_match

__all__ = ["SetCriterion", "semantic_targets"]


def semantic_targets(sem_seg: torch.Tensor, ignore_value: int = 255
                     ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(N, H, W) label maps -> per image (labels (T,), binary masks (T, H, W) float), one target
    per class present ("one instance per class"), ignore excluded."""
    out = []
    for label in sem_seg:
        classes = torch.unique(label)
        classes = classes[classes != ignore_value]
        masks = (label[None] == classes[:, None, None]).float()
        out.append((classes.long(), masks))
    return out


def _batch_dice(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    inputs = inputs.sigmoid()
    numerator = 2 * inputs @ targets.T
    denominator = inputs.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)


def _batch_bce(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean BCE of every (prediction, target) pair over the points. BCE(x, 0) = BCE(x, 1) + x,
    so one elementwise pass suffices: (sum BCE(x, 1) + x . (1 - t)) / points."""
    pos = F.binary_cross_entropy_with_logits(inputs, torch.ones_like(inputs), reduction="none")
    return (pos.sum(-1, keepdim=True) + inputs @ (1 - targets).T) / inputs.shape[1]


class SetCriterion(nn.Module):
    """See the module doc."""

    def __init__(self, num_classes: int, class_weight: float = 2.0, mask_weight: float = 5.0,
                 dice_weight: float = 5.0, no_object_weight: float = 0.1, num_points: int = 12544,
                 oversample_ratio: float = 3.0, importance_sample_ratio: float = 0.75):
        super().__init__()
        self.num_classes = num_classes
        self.class_weight, self.mask_weight, self.dice_weight = class_weight, mask_weight, dice_weight
        self.num_points = int(num_points)
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        empty = torch.ones(num_classes + 1)
        empty[-1] = no_object_weight
        self.register_buffer("empty_weight", empty, persistent=False)

    @torch.no_grad()
    def match(self, cls: torch.Tensor, masks: torch.Tensor,
              targets: list[tuple[torch.Tensor, torch.Tensor]]) -> list[tuple[torch.Tensor, ...]]:
        """Hungarian matching per image -> [(query indices, target indices)]."""
        indices = []
        for b, (labels, tmasks) in enumerate(targets):
            if len(labels) == 0:
                empty = torch.zeros(0, dtype=torch.int64)
                indices.append((empty, empty))
                continue
            cost_class = -cls[b].softmax(-1)[:, labels]
            points = torch.rand(1, self.num_points, 2, device=masks.device)
            t = point_sample(tmasks[:, None].to(masks), points.repeat(len(labels), 1, 1),
                             align_corners=False).squeeze(1)
            p = point_sample(masks[b][:, None], points.repeat(masks.shape[1], 1, 1),
                             align_corners=False).squeeze(1)
            cost = (self.class_weight * cost_class + self.mask_weight * _batch_bce(p, t)
                    + self.dice_weight * _batch_dice(p, t))
            cost = torch.nan_to_num(cost.float(), nan=1e8, posinf=1e8, neginf=-1e8)
            indices.append(hungarian_match(cost.cpu()))
        return indices

    def num_masks(self, targets, device) -> float:
        n = torch.as_tensor(float(sum(len(t[0]) for t in targets)), device=device)
        if comm.get_world_size() > 1:
            torch.distributed.all_reduce(n)
        return max(n.item() / comm.get_world_size(), 1.0)

    def layer_losses(self, cls, masks, targets, num_masks: float) -> dict[str, torch.Tensor]:
        """Unweighted CE, BCE and dice of one prediction set."""
        indices = self.match(cls, masks, targets)
        batch_idx = torch.cat([torch.full_like(q, b) for b, (q, _) in enumerate(indices)])
        query_idx = torch.cat([q for q, _ in indices])
        target_classes = torch.full(cls.shape[:2], self.num_classes, dtype=torch.int64,
                                    device=cls.device)
        target_classes[batch_idx, query_idx] = torch.cat(
            [t[0][j.to(t[0].device)] for t, (_, j) in zip(targets, indices)]
        ).to(cls.device)
        loss_ce = F.cross_entropy(cls.transpose(1, 2), target_classes,
                                  self.empty_weight.to(cls.dtype))
        if len(query_idx) == 0:
            zero = masks.sum() * 0.0
            return {"ce": loss_ce, "mask": zero, "dice": zero}
        src = masks[batch_idx, query_idx][:, None]
        tgt = torch.cat([t[1][j.to(t[1].device)] for t, (_, j) in zip(targets, indices)])
        tgt = tgt[:, None].to(src)
        with torch.no_grad():
            points = get_uncertain_point_coords_with_randomness(
                src, lambda logits: -logits.abs(), self.num_points, self.oversample_ratio,
                self.importance_sample_ratio,
            )
            point_labels = point_sample(tgt, points, align_corners=False).squeeze(1)
        point_logits = point_sample(src, points, align_corners=False).squeeze(1)
        bce = F.binary_cross_entropy_with_logits(point_logits, point_labels, reduction="none")
        probs = point_logits.sigmoid()
        dice = 1 - (2 * (probs * point_labels).sum(-1) + 1) / (
            probs.sum(-1) + point_labels.sum(-1) + 1)
        return {"ce": loss_ce, "mask": bce.mean(1).sum() / num_masks,
                "dice": dice.sum() / num_masks}

    def forward(self, predictions: list[tuple[torch.Tensor, torch.Tensor]],
                targets: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """predictions: [(cls, masks)] initial first, final last -> weighted losses."""
        num_masks = self.num_masks(targets, predictions[-1][0].device)
        weights = {"ce": self.class_weight, "mask": self.mask_weight, "dice": self.dice_weight}
        losses = {}
        order = [len(predictions) - 1, *range(len(predictions) - 1)]
        for i in order:
            suffix = "" if i == len(predictions) - 1 else f"_{i}"
            for k, v in self.layer_losses(*predictions[i], targets, num_masks).items():
                losses[f"loss_{k}{suffix}"] = v * weights[k]
        return losses
