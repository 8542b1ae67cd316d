"""Co-DETR's collaborative auxiliary heads on the encoder's six maps (official: rpn_head / roi_head /
bbox_head in DGOD/configs/_base_/models/dinov2_codetr.py; DGOD/projects/CO_DETR/codetr/co_roi_head.py,
co_atss_head.py).

The Faster R-CNN branch is assembled from Detectron2's own RPN and StandardROIHeads pieces with the
sheet's settings (anchors 4 * 2^(k/3) x stride at ratios 0.5/1/2 on strides 4-128, L1 RPN deltas,
2fc-1024 RoI head, GIoU on decoded boxes); the ATSS branch is written here since Detectron2 has
none. Every loss carries the x12 (= 6 decoder layers x lambda 2) factor. Each branch also returns
its positive samples (reference box, assigned GT box, label) and some negatives: those become the
customised positive queries that run through the shared decoder (section 1.7).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from detectron2.layers import ShapeSpec, nonzero_tuple
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.proposal_generator.rpn import RPN, StandardRPNHead
from detectron2.modeling.roi_heads import StandardROIHeads
from detectron2.modeling.roi_heads.box_head import FastRCNNConvFCHead
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers
from detectron2.structures import ImageList, Instances
from torch import nn
from torchvision.ops import box_iou, generalized_box_iou_loss

from .losses import sigmoid_focal_loss

__all__ = ["ATSSHead", "AuxSamples", "MinIoUMatcher", "RCNNBranch", "atss_assign"]

AUX_STRIDES = (4, 8, 16, 32, 64, 128)


class AuxSamples:
    """Per image: reference boxes (xyxy, canvas px), target boxes, labels (C = negative)."""

    def __init__(self, refs: list[torch.Tensor], targets: list[torch.Tensor],
                 labels: list[torch.Tensor]):
        self.refs, self.targets, self.labels = refs, targets, labels


# ---- Faster R-CNN branch (Detectron2 pieces) ----------------------------------------------------
class MinIoUMatcher(Matcher):
    """Detectron2's Matcher whose low-quality matches need IoU >= `min_pos_iou` (mmdet
    MaxIoUAssigner(match_low_quality=True, min_pos_iou=0.3)); Detectron2 accepts any IoU."""

    def __init__(self, *args, min_pos_iou: float = 0.3, **kwargs):
        super().__init__(*args, **kwargs)
        self.min_pos_iou = min_pos_iou

    def set_low_quality_matches_(self, match_labels, match_quality_matrix):
        best, _ = match_quality_matrix.max(dim=1)
        ok = best >= self.min_pos_iou
        _, preds = nonzero_tuple((match_quality_matrix == best[:, None]) & ok[:, None])
        match_labels[preds] = 1


class RCNNBranch(nn.Module):
    """RPN + StandardROIHeads on the aux maps; losses named loss_aux_rpn_* / loss_aux_rcnn_*."""

    def __init__(self, dim: int, num_classes: int, scale: float, *, pre_nms_topk: int = 4000,
                 post_nms_topk: int = 1000, rpn_batch: int = 256, roi_batch: int = 512,
                 fc_dim: int = 1024):
        super().__init__()
        names = [f"a{i}" for i in range(len(AUX_STRIDES))]
        sizes = [[4 * s * 2 ** (k / 3) for k in range(3)] for s in AUX_STRIDES]
        anchors = DefaultAnchorGenerator(sizes=sizes, aspect_ratios=[[0.5, 1.0, 2.0]],
                                         strides=list(AUX_STRIDES), offset=0.0)
        self.rpn = RPN(
            in_features=names,
            head=StandardRPNHead(in_channels=dim, num_anchors=9, box_dim=4),
            anchor_generator=anchors,
            anchor_matcher=MinIoUMatcher([0.3, 0.7], [0, -1, 1], allow_low_quality_matches=True),
            box2box_transform=Box2BoxTransform(weights=(1.0, 1.0, 1.0, 1.0)),
            batch_size_per_image=rpn_batch, positive_fraction=0.5,
            pre_nms_topk=(pre_nms_topk, 1000), post_nms_topk=(post_nms_topk, 1000),
            nms_thresh=0.7, min_box_size=0.0,
            loss_weight={"loss_rpn_cls": scale, "loss_rpn_loc": scale},
            box_reg_loss_type="smooth_l1", smooth_l1_beta=0.0,
        )
        pooler = ROIPooler(output_size=7, scales=[1.0 / s for s in AUX_STRIDES[:5]],
                           sampling_ratio=0, pooler_type="ROIAlignV2", canonical_box_size=56,
                           canonical_level=2)
        box_head = FastRCNNConvFCHead(ShapeSpec(channels=dim, height=7, width=7), conv_dims=[],
                                      fc_dims=[fc_dim, fc_dim])
        predictor = FastRCNNOutputLayers(
            ShapeSpec(channels=fc_dim), box2box_transform=Box2BoxTransform((10.0, 10.0, 5.0, 5.0)),
            num_classes=num_classes, box_reg_loss_type="giou",
            loss_weight={"loss_cls": scale, "loss_box_reg": 10.0 * scale})
        self.roi_heads = StandardROIHeads(
            box_in_features=names[:5], box_pooler=pooler, box_head=box_head,
            box_predictor=predictor, num_classes=num_classes, batch_size_per_image=roi_batch,
            positive_fraction=0.25,
            proposal_matcher=Matcher([0.5], [0, 1], allow_low_quality_matches=False),
            proposal_append_gt=True)
        self.names = names
        self.num_classes = num_classes

    def forward(self, maps: list[torch.Tensor], gt: list[Instances], canvas: tuple[int, int]
                ) -> tuple[dict[str, torch.Tensor], AuxSamples]:
        feats = dict(zip(self.names, maps))
        images = ImageList(maps[0].new_zeros(len(gt), 1, *canvas), [canvas] * len(gt))
        gt_rpn = []
        for inst in gt:  # the RPN is class-agnostic
            g = Instances(inst.image_size, gt_boxes=inst.gt_boxes,
                          gt_classes=torch.zeros_like(inst.gt_classes))
            gt_rpn.append(g)
        proposals, rpn_losses = self.rpn(images, feats, gt_rpn)
        sampled = self.roi_heads.label_and_sample_proposals(proposals, gt)
        roi_losses = self.roi_heads._forward_box(feats, sampled)
        losses = {"loss_aux_rpn_cls": rpn_losses["loss_rpn_cls"],
                  "loss_aux_rpn_bbox": rpn_losses["loss_rpn_loc"],
                  "loss_aux_rcnn_cls": roi_losses["loss_cls"],
                  "loss_aux_rcnn_giou": roi_losses["loss_box_reg"]}
        refs, targets, labels = [], [], []
        for p in sampled:
            refs.append(p.proposal_boxes.tensor.detach())
            labels.append(p.gt_classes)
            targets.append(p.gt_boxes.tensor if p.has("gt_boxes")
                           else p.proposal_boxes.tensor.detach())
        return losses, AuxSamples(refs, targets, labels)


# ---- ATSS branch ------------------------------------------------------------------------------
def atss_assign(anchors: torch.Tensor, num_per_level: list[int], gt_boxes: torch.Tensor,
                topk: int = 9) -> torch.Tensor:
    """mmdet ATSSAssigner: index of the assigned GT per anchor, -1 for background.

    Per GT: the `topk` anchors closest (centre distance) on each level are candidates; those with
    IoU >= mean + std of the candidates' IoUs and centre inside the GT are positive; an anchor
    positive for several GTs takes the one with the highest IoU.
    """
    num_anchors, num_gt = anchors.shape[0], gt_boxes.shape[0]
    assigned = torch.full((num_anchors,), -1, dtype=torch.long, device=anchors.device)
    if num_gt == 0:
        return assigned
    ious = box_iou(anchors, gt_boxes)
    a_ctr = (anchors[:, :2] + anchors[:, 2:]) / 2
    g_ctr = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2
    dist = torch.cdist(a_ctr, g_ctr)
    candidates, start = [], 0
    for n in num_per_level:
        k = min(topk, n)
        candidates.append(dist[start:start + n].topk(k, dim=0, largest=False)[1] + start)
        start += n
    candidates = torch.cat(candidates, 0)  # (K, G)
    cand_ious = ious.gather(0, candidates)
    thr = cand_ious.mean(0) + cand_ious.std(0)
    is_pos = cand_ious >= thr[None]
    cx, cy = a_ctr[candidates, 0], a_ctr[candidates, 1]
    inside = torch.stack([cx - gt_boxes[:, 0], cy - gt_boxes[:, 1], gt_boxes[:, 2] - cx,
                          gt_boxes[:, 3] - cy], -1).min(-1)[0] > 0.01
    is_pos &= inside
    overlaps = torch.full_like(ious, -math.inf)
    gt_index = torch.arange(num_gt, device=anchors.device)[None].expand_as(candidates)
    overlaps[candidates[is_pos], gt_index[is_pos]] = ious[candidates[is_pos], gt_index[is_pos]]
    best, arg = overlaps.max(1)
    assigned[best > -math.inf] = arg[best > -math.inf]
    return assigned


class _Scale(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(1.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class ATSSHead(nn.Module):
    """ATSS with one conv+GN+ReLU per tower, one 8*stride square anchor per location."""

    def __init__(self, dim: int, num_classes: int, gn_groups: int, scale: float, topk: int = 9):
        super().__init__()

        def tower() -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1, bias=False),
                                 nn.GroupNorm(gn_groups, dim), nn.ReLU(inplace=True))

        self.cls_convs, self.reg_convs = tower(), tower()
        self.atss_cls = nn.Conv2d(dim, num_classes, 3, padding=1)
        self.atss_reg = nn.Conv2d(dim, 4, 3, padding=1)
        self.atss_centerness = nn.Conv2d(dim, 1, 3, padding=1)
        self.scales = nn.ModuleList(_Scale() for _ in AUX_STRIDES)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0.0)
        nn.init.constant_(self.atss_cls.bias, -math.log((1 - 0.01) / 0.01))
        self.transform = Box2BoxTransform(weights=(10.0, 10.0, 5.0, 5.0))
        self.num_classes, self.scale, self.topk = num_classes, scale, topk

    @staticmethod
    def anchors(maps: list[torch.Tensor]) -> tuple[torch.Tensor, list[int]]:
        out, counts = [], []
        for fmap, stride in zip(maps, AUX_STRIDES):
            h, w = fmap.shape[-2:]
            ys, xs = torch.meshgrid(torch.arange(h, device=fmap.device, dtype=torch.float32),
                                    torch.arange(w, device=fmap.device, dtype=torch.float32),
                                    indexing="ij")
            ctr = torch.stack([xs.flatten(), ys.flatten()], -1) * stride
            half = 4.0 * stride
            out.append(torch.cat([ctr - half, ctr + half], -1))
            counts.append(h * w)
        return torch.cat(out, 0), counts

    def forward(self, maps: list[torch.Tensor], gt: list[Instances]
                ) -> tuple[dict[str, torch.Tensor], AuxSamples]:
        cls, reg, ctr = [], [], []
        for fmap, scale in zip(maps, self.scales):
            c, r = self.cls_convs(fmap), self.reg_convs(fmap)
            cls.append(self.atss_cls(c).flatten(2).transpose(1, 2))
            reg.append(scale(self.atss_reg(r)).flatten(2).transpose(1, 2))
            ctr.append(self.atss_centerness(r).flatten(2).transpose(1, 2))
        cls, reg, ctr = torch.cat(cls, 1), torch.cat(reg, 1), torch.cat(ctr, 1)[..., 0]
        anchors, counts = self.anchors(maps)
        labels, targets, assigned_all = [], [], []
        for inst in gt:
            assigned = atss_assign(anchors, counts, inst.gt_boxes.tensor, self.topk)
            lab = torch.full_like(assigned, self.num_classes)
            tgt = anchors.clone()
            pos = assigned >= 0
            lab[pos] = inst.gt_classes[assigned[pos]]
            tgt[pos] = inst.gt_boxes.tensor[assigned[pos]]
            labels.append(lab)
            targets.append(tgt)
            assigned_all.append(pos)
        labels_t, pos = torch.stack(labels), torch.stack(assigned_all)
        num_pos = max(float(pos.sum()), 1.0)
        loss_cls = sigmoid_focal_loss(cls.flatten(0, 1), labels_t.flatten()).sum() / num_pos
        if pos.any():
            deltas = reg[pos]
            pos_anchors = anchors[None].expand(len(gt), -1, -1)[pos]
            pos_targets = torch.stack(targets)[pos]
            decoded = self.transform.apply_deltas(deltas, pos_anchors)
            centerness = _centerness(pos_anchors, pos_targets)
            giou = generalized_box_iou_loss(decoded, pos_targets, reduction="none")
            loss_giou = (giou * centerness).sum() / centerness.sum().clamp(min=1e-6)
            loss_ctr = F.binary_cross_entropy_with_logits(ctr[pos], centerness,
                                                          reduction="sum") / num_pos
        else:
            loss_giou = reg.sum() * 0.0
            loss_ctr = ctr.sum() * 0.0
        losses = {"loss_aux_atss_cls": self.scale * loss_cls,
                  "loss_aux_atss_giou": 2.0 * self.scale * loss_giou,
                  "loss_aux_atss_centerness": self.scale * loss_ctr}
        return losses, AuxSamples([anchors] * len(gt), targets, labels)


def _centerness(anchors: torch.Tensor, gts: torch.Tensor) -> torch.Tensor:
    cx = (anchors[:, 0] + anchors[:, 2]) / 2
    cy = (anchors[:, 1] + anchors[:, 3]) / 2
    lr = torch.stack([cx - gts[:, 0], gts[:, 2] - cx], 1)
    tb = torch.stack([cy - gts[:, 1], gts[:, 3] - cy], 1)
    c = (lr.min(1)[0] / lr.max(1)[0]) * (tb.min(1)[0] / tb.max(1)[0])
    return c.clamp(min=0).sqrt()
