"""`SoMACoDINO`: the paper's DG detector as a Detectron2 meta-architecture.

ViT raw taps (MODEL.BACKBONE.NAME, soma_d2's `build_soma_vit_taps_backbone`) -> ChannelMapper ->
Co-DINO query head (+ Faster R-CNN and ATSS auxiliary heads and their positive queries in
training). Images arrive already padded to the INPUT.IMAGE_SIZE canvas
by the `codino_detr` mapper, and the whole canvas counts as image (official: mmcv 2.0.0 `Pad` in
DGOD/configs/_base_/datasets/*_1024x1024.py overwrites `img_shape` with the padded shape): boxes are
normalised by the canvas, and predictions are mapped back to the original image by the resize
factor only (the mapper records the un-padded resized size as `image_size`).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from detectron2.config import CfgNode, configurable
from detectron2.data import MetadataCatalog
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_backbone
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, ImageList, Instances
from torch import nn
from torchvision.ops import box_convert

from .aux_heads import ATSSHead, AuxSamples, RCNNBranch
from .config import check_dataset_classes
from .head import CoDINOHead
from .neck import ChannelMapper
from .soft_nms import batched_soft_nms

__all__ = ["SoMACoDINO"]


def _dataset_classes(cfg: CfgNode) -> int | None:
    if not cfg.DATASETS.TRAIN:
        return None
    classes = MetadataCatalog.get(cfg.DATASETS.TRAIN[0]).get("thing_classes", None)
    return None if classes is None else len(classes)


@META_ARCH_REGISTRY.register()
class SoMACoDINO(nn.Module):
    """Co-DINO on a SoMA-adapted DINOv2 ViT (see the module docstring).

    `@configurable` like Detectron2's meta-architectures: `SoMACoDINO(cfg)` builds every part from
    the config (the backbone through `build_backbone`, i.e. MODEL.BACKBONE.NAME, by default
    soma_d2's `build_soma_vit_taps_backbone`), and keyword arguments build it from parts.
    """

    @configurable
    def __init__(self, *, backbone: Backbone, neck: nn.Module, query_head: CoDINOHead,
                 rcnn: RCNNBranch | None, atss: ATSSHead | None, num_classes: int,
                 aux_queries: bool, max_aux_pos: int, test_topk: int,
                 nms: tuple[float, float, float], canvas: int,
                 pixel_mean: Sequence[float], pixel_std: Sequence[float]):
        """`backbone` gives 4 maps (finest first by stride) that `neck` maps to the head's 5
        levels; `rcnn` / `atss` are the optional auxiliary branches; `nms` is (IoU, sigma,
        min score) of the test-time soft-NMS; `canvas` the padded input side."""
        super().__init__()
        self.backbone = backbone
        shapes = backbone.output_shape()
        self.in_features = sorted(shapes, key=lambda k: shapes[k].stride)
        self.neck = neck
        self.num_classes = int(num_classes)
        self.query_head = query_head
        self.rcnn = rcnn
        self.atss = atss
        self.aux_queries = bool(aux_queries)
        self.max_aux_pos = int(max_aux_pos)
        self.test_topk = int(test_topk)
        self.nms = tuple(float(v) for v in nms)
        self.canvas = int(canvas)
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict:
        check_dataset_classes(cfg, _dataset_classes(cfg))
        c = cfg.MODEL.CODINO
        backbone = build_backbone(cfg)
        shapes = backbone.output_shape()
        if len(shapes) != 4:
            raise ValueError(
                f"MODEL.BACKBONE.NAME={cfg.MODEL.BACKBONE.NAME!r} gives {len(shapes)} feature maps "
                f"({sorted(shapes)}); Co-DINO's neck needs 4 (build_soma_vit_taps_backbone)"
            )
        channels = [shapes[k].channels for k in sorted(shapes, key=lambda k: shapes[k].stride)]
        dim = int(c.HIDDEN_DIM)
        neck = ChannelMapper(channels, dim, int(c.GN_GROUPS))
        num_classes = int(c.NUM_CLASSES)
        query_head = CoDINOHead(
            num_classes=num_classes, dim=dim, num_queries=int(c.NUM_QUERIES),
            enc_layers=int(c.ENC_LAYERS), dec_layers=int(c.DEC_LAYERS), heads=int(c.NUM_HEADS),
            levels=5, points=int(c.NUM_POINTS), ffn_dim=int(c.FFN_DIM),
            enc_temperature=float(c.ENC_POS_TEMPERATURE), dn_queries=int(c.DN_NUM_QUERIES),
            dn_label_noise=float(c.DN_LABEL_NOISE), dn_box_noise=float(c.DN_BOX_NOISE),
            loss_weights=(float(c.CLS_WEIGHT), float(c.L1_WEIGHT), float(c.GIOU_WEIGHT)),
            match_weights=(float(c.MATCH_CLS_COST), float(c.MATCH_L1_COST),
                           float(c.MATCH_GIOU_COST)),
            num_aux_heads=int(c.AUX_RCNN) + int(c.AUX_ATSS), gn_groups=int(c.GN_GROUPS),
            encoder_checkpoint=int(c.ENCODER_CHECKPOINT))
        scale = float(c.AUX_LOSS_SCALE)
        rcnn = (RCNNBranch(dim, num_classes, scale, pre_nms_topk=int(c.RPN_PRE_NMS_TOPK),
                           post_nms_topk=int(c.RPN_POST_NMS_TOPK),
                           rpn_batch=int(c.RPN_BATCH_PER_IMAGE),
                           roi_batch=int(c.ROI_BATCH_PER_IMAGE), fc_dim=int(c.ROI_FC_DIM))
                if c.AUX_RCNN else None)
        atss = (ATSSHead(dim, num_classes, int(c.GN_GROUPS), scale, int(c.ATSS_TOPK))
                if c.AUX_ATSS else None)
        return dict(
            backbone=backbone, neck=neck, query_head=query_head, rcnn=rcnn, atss=atss,
            num_classes=num_classes, aux_queries=bool(c.AUX_QUERIES),
            max_aux_pos=int(c.AUX_MAX_POS), test_topk=int(c.TEST_TOPK),
            nms=(float(c.SOFT_NMS_IOU), float(c.SOFT_NMS_SIGMA), float(c.SOFT_NMS_MIN_SCORE)),
            canvas=int(cfg.INPUT.IMAGE_SIZE), pixel_mean=list(cfg.MODEL.PIXEL_MEAN),
            pixel_std=list(cfg.MODEL.PIXEL_STD))

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess(self, batched_inputs: list[dict]) -> ImageList:
        images = []
        for x in batched_inputs:
            img = x["image"]
            if max(img.shape[-2:]) > self.canvas:
                raise ValueError(
                    f"image {x.get('file_name', '?')} reaches the model at {tuple(img.shape[-2:])}"
                    f", larger than the padded canvas INPUT.IMAGE_SIZE={self.canvas}; use the "
                    "'codino_detr' mapper (INPUT.DATASET_MAPPER_NAME) or raise INPUT.IMAGE_SIZE"
                )
            images.append((img.to(self.device).float() - self.pixel_mean) / self.pixel_std)
        return ImageList.from_tensors(images, 0)

    def forward(self, batched_inputs: list[dict]):
        images = self.preprocess(batched_inputs)
        canvas = tuple(images.tensor.shape[-2:])
        taps = self.backbone(images.tensor)
        feats = self.neck([taps[k] for k in self.in_features])
        enc = self.query_head.encode(feats)
        if not self.training:
            out = self.query_head(enc)
            return self.inference(out, batched_inputs, canvas)
        gt = [x["instances"].to(self.device) for x in batched_inputs]
        scale = images.tensor.new_tensor([canvas[1], canvas[0], canvas[1], canvas[0]])
        gt_labels = [g.gt_classes for g in gt]
        gt_boxes = [box_convert(g.gt_boxes.tensor / scale, "xyxy", "cxcywh") for g in gt]
        out = self.query_head(enc, gt_labels, gt_boxes)
        losses = self.query_head.losses(out, gt_labels, gt_boxes, canvas)
        samples: list[tuple[str, AuxSamples]] = []
        for name, branch in (("rcnn", self.rcnn), ("atss", self.atss)):
            if branch is None:
                continue
            maps = enc["aux_maps"]
            branch_losses, branch_samples = (branch(maps, gt, canvas) if name == "rcnn"
                                             else branch(maps, gt))
            losses.update(branch_losses)
            samples.append((name, branch_samples))
        if self.aux_queries:
            for index, (name, s) in enumerate(samples):
                losses.update(self._aux_query_losses(enc, s, index, name, scale, canvas))
        return losses

    def _aux_query_losses(self, enc, s: AuxSamples, index: int, name: str, scale, canvas):
        """Section 1.7: N = max(9, min(max_pos, most positives)); fill with negatives."""
        c = self.num_classes
        most = max(int((lab < c).sum()) for lab in s.labels)
        n = max(9, min(self.max_aux_pos, most))
        refs, targets, labels, weights = [], [], [], []
        for ref, tgt, lab in zip(s.refs, s.targets, s.labels):
            pos = torch.nonzero(lab < c).squeeze(1)
            neg = torch.nonzero(lab >= c).squeeze(1)
            pos = pos[torch.randperm(len(pos), device=pos.device)[:n]]
            need = n - len(pos)
            if need > 0:
                pool = neg if len(neg) else torch.arange(len(lab), device=lab.device)
                if len(pool) < need:  # too few negatives: draw with replacement
                    neg = pool[torch.randint(len(pool), (need,), device=pool.device)]
                else:
                    neg = pool[torch.randperm(len(pool), device=pool.device)[:need]]
            else:
                neg = neg[:0]
            idx = torch.cat([pos, neg])
            w = torch.cat([torch.ones(len(pos), device=ref.device),
                           torch.zeros(len(neg), device=ref.device)])
            lb = lab[idx].clone()
            lb[len(pos):] = c
            refs.append(box_convert(ref[idx] / scale, "xyxy", "cxcywh").clamp(0, 1))
            targets.append(box_convert(tgt[idx] / scale, "xyxy", "cxcywh"))
            labels.append(lb)
            weights.append(w)
        logits, boxes = self.query_head.forward_aux(enc, torch.stack(refs), index)
        return self.query_head.aux_query_losses(
            logits, boxes, torch.cat(labels), torch.cat(targets), torch.cat(weights), canvas,
            name)

    @torch.no_grad()
    def inference(self, out: dict, batched_inputs: list[dict], canvas: tuple[int, int]):
        """Last layer, sigmoid, flat top-k, class-aware soft-NMS, boxes back to the original."""
        logits, boxes = out["logits"][-1], out["boxes"][-1]
        scale = boxes.new_tensor([canvas[1], canvas[0], canvas[1], canvas[0]])
        results = []
        for i, x in enumerate(batched_inputs):
            scores = logits[i].sigmoid().flatten()
            top, index = scores.topk(min(self.test_topk, scores.numel()))
            classes = index % self.num_classes
            xyxy = box_convert(boxes[i][index // self.num_classes], "cxcywh", "xyxy") * scale
            xyxy[:, 0::2] = xyxy[:, 0::2].clamp(0, canvas[1])
            xyxy[:, 1::2] = xyxy[:, 1::2].clamp(0, canvas[0])
            iou, sigma, min_score = self.nms
            keep, new_scores = batched_soft_nms(xyxy, top, classes, iou, sigma, min_score,
                                                self.test_topk)
            size = tuple(x.get("image_size", canvas))
            inst = Instances(size)
            inst.pred_boxes = Boxes(xyxy[keep])
            inst.scores = new_scores
            inst.pred_classes = classes[keep]
            height, width = x.get("height", size[0]), x.get("width", size[1])
            results.append({"instances": detector_postprocess(inst, height, width)})
        return results
