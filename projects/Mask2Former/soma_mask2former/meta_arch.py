"""`SoMAMask2Former`: the paper's DG segmenter as a Detectron2 meta-architecture.

It is `SoMASemanticSegmentor` (normalise, pad to the backbone's divisibility, whole or
sliding-window inference, TTA) with the backbone and head the official model needs: the four raw
ViT taps (soma_d2's `build_soma_vit_taps_backbone`) and `Mask2FormerHead`. Other names are refused
and slide windows must be multiples of the coarsest stride (32), so no window is padded; both are
checked when the config is built (`validate_mask2former_config`). In training, images and label maps are padded
bottom-right to at least the crop size (image 0 after normalisation, label 255), as mmseg's
`SegDataPreProcessor(size=crop_size)` does, so crops cut from small images keep the crop's shape.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from detectron2.config import CfgNode, configurable
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.structures import ImageList
from torch.nn import functional as F

from soma_d2.modeling import SoMASemanticSegmentor

__all__ = ["SoMAMask2Former", "freeze_by_patterns"]

@META_ARCH_REGISTRY.register()
class SoMAMask2Former(SoMASemanticSegmentor):
    """See the module doc."""

    @configurable
    def __init__(self, *, train_pad_size: Sequence[int] = (0, 0), **kwargs):
        """`train_pad_size`: (h, w) every training input is padded to at least (the crop)."""
        super().__init__(**kwargs)
        self.train_pad_size = tuple(int(v) for v in train_pad_size)

    def _pad(self, tensors: list[torch.Tensor], pad_value: float = 0.0) -> ImageList:
        if self.training and any(self.train_pad_size):
            th, tw = self.train_pad_size
            tensors = [F.pad(t, (0, max(0, tw - t.shape[-1]), 0, max(0, th - t.shape[-2])),
                             value=pad_value) for t in tensors]
        return super()._pad(tensors, pad_value)

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict:
        ret = super().from_config(cfg)
        freeze_by_patterns(ret["backbone"].net, list(cfg.MODEL.MASK2FORMER.FREEZE_BACKBONE_PATTERNS))
        ret["train_pad_size"] = tuple(cfg.INPUT.CROP.SIZE) if cfg.INPUT.CROP.ENABLED else (0, 0)
        return ret


def freeze_by_patterns(module: torch.nn.Module, patterns: list[str]) -> list[str]:
    """requires_grad False on every parameter whose name contains one of `patterns`
    (MODEL.MASK2FORMER.FREEZE_BACKBONE_PATTERNS, on top of MODEL.SOMA.MODE)."""
    frozen = []
    for name, p in module.named_parameters():
        if any(pat in name for pat in patterns) and p.requires_grad:
            p.requires_grad_(False)
            frozen.append(name)
    return frozen
