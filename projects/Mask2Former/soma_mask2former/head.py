"""The Mask2Former head as a Detectron2 semantic-segmentation head (`SemSegFPNHead` contract).

`Mask2FormerHead(cfg, input_shape)` = pixel decoder + masked-attention decoder + set criterion.
`forward(features, targets)` returns `(None, losses)` in training (targets: (N, H, W) label maps
padded with `ignore_value`) and `(scores, {})` in evaluation, scores (N, K, H, W) at the padded
input size: softmax over the classes with no-object dropped times the sigmoid of the mask logits
(bilinearly upsampled from stride 4), summed over queries, as the official semantic inference.
So `SoMASemanticSegmentor` (whole / sliding-window inference, TTA, padding) runs it unchanged.
"""
from __future__ import annotations

import torch
from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from torch import nn
from torch.nn import functional as F

from .criterion import SetCriterion, semantic_targets
from .pixel_decoder import MSDeformAttnPixelDecoder
from .transformer_decoder import MaskedAttentionDecoder

__all__ = ["Mask2FormerHead", "semantic_inference"]


def semantic_inference(cls: torch.Tensor, masks: torch.Tensor, size) -> torch.Tensor:
    """(B, Q, K+1) class logits, (B, Q, h, w) mask logits -> (B, K, *size) class scores."""
    masks = F.interpolate(masks, size=size, mode="bilinear", align_corners=False)
    return torch.einsum("bqc,bqhw->bchw", cls.softmax(-1)[..., :-1], masks.sigmoid())


@SEM_SEG_HEADS_REGISTRY.register()
class Mask2FormerHead(nn.Module):
    """See the module doc."""

    def __init__(self, cfg: CfgNode, input_shape: dict[str, ShapeSpec]):
        super().__init__()
        m = cfg.MODEL.MASK2FORMER
        self.in_features = sorted(input_shape, key=lambda k: input_shape[k].stride)
        self.ignore_value = int(cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE)
        self.num_classes = int(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES)
        self._finest_stride = int(input_shape[self.in_features[0]].stride)
        self.deep_supervision = bool(m.DEEP_SUPERVISION)
        dim = int(m.HIDDEN_DIM)
        if dim % int(m.NUM_GROUPS) or dim % int(m.NUM_HEADS) or dim % 2:
            raise ValueError(
                f"MODEL.MASK2FORMER.HIDDEN_DIM={dim} must be even and divisible by NUM_GROUPS="
                f"{m.NUM_GROUPS} and NUM_HEADS={m.NUM_HEADS}"
            )
        self.pixel_decoder = MSDeformAttnPixelDecoder(
            [input_shape[k].channels for k in self.in_features], dim=dim, mask_dim=int(m.MASK_DIM),
            heads=int(m.NUM_HEADS), points=int(m.ENC_POINTS), ffn_dim=int(m.ENC_FFN_DIM),
            num_layers=int(m.ENC_LAYERS), groups=int(m.NUM_GROUPS),
        )
        if int(m.MASK_DIM) != dim:
            raise ValueError(f"MODEL.MASK2FORMER.MASK_DIM={m.MASK_DIM} must equal HIDDEN_DIM={dim}")
        self.transformer_decoder = MaskedAttentionDecoder(
            self.num_classes, dim=dim, num_queries=int(m.NUM_QUERIES), heads=int(m.NUM_HEADS),
            ffn_dim=int(m.DEC_FFN_DIM), num_layers=int(m.DEC_LAYERS), mask_dim=int(m.MASK_DIM),
        )
        self.criterion = SetCriterion(
            self.num_classes, class_weight=m.CLASS_WEIGHT, mask_weight=m.MASK_WEIGHT,
            dice_weight=m.DICE_WEIGHT, no_object_weight=m.NO_OBJECT_WEIGHT,
            num_points=m.TRAIN_NUM_POINTS, oversample_ratio=m.OVERSAMPLE_RATIO,
            importance_sample_ratio=m.IMPORTANCE_SAMPLE_RATIO,
        )

    def layers(self, features: dict[str, torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """All prediction sets [(cls, masks)], the initial queries' first, the final last."""
        mask_features, memories = self.pixel_decoder([features[k] for k in self.in_features])
        return self.transformer_decoder(memories, mask_features)

    def forward(self, features: dict[str, torch.Tensor], targets: torch.Tensor | None = None):
        predictions = self.layers(features)
        if self.training:
            if targets is None:
                raise ValueError("Mask2FormerHead in training mode needs the label maps")
            preds = predictions if self.deep_supervision else predictions[-1:]
            return None, self.criterion(preds, semantic_targets(targets, self.ignore_value))
        cls, masks = predictions[-1]
        first = features[self.in_features[0]]
        size = (first.shape[-2] * self._finest_stride, first.shape[-1] * self._finest_stride)
        return semantic_inference(cls, masks, size), {}
