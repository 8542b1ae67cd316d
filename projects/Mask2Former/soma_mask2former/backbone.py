"""The official feature forming: four raw ViT taps resized x4 / x2 / x1 / x0.5, no neck.

The official segmenter reads the outputs of blocks 7/11/15/23 (no final norm) and only resizes
them bilinearly (align_corners False) to strides 4/8/16/32 with the ViT's width; the head's pixel
decoder does all channel reduction. Detectron2's ViTDet pyramid (convs, deconvs, norms) is a
different model, so this backbone keeps the SoMA ViT (`.net`, built by `build_soma_vit`, i.e.
pretrained weights loaded before the decomposition) and adds nothing trainable.
"""
from __future__ import annotations

import math

import torch
from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from torch.nn import functional as F

from soma_d2.modeling import build_soma_vit

__all__ = ["ViTTapsBackbone", "build_soma_vit_taps_backbone"]


class ViTTapsBackbone(Backbone):
    """Resize each ViT tap by its factor; outputs `res2`..`res5` (strides 4..32 for patch 16)."""

    def __init__(self, net: Backbone, scales: list[float]):
        super().__init__()
        taps = [f"block{i}" for i in net.out_indices]
        if len(taps) != len(scales):
            raise ValueError(
                f"MODEL.VIT.OUT_INDICES has {len(taps)} entries but MODEL.MASK2FORMER.TAP_SCALES "
                f"has {len(scales)}; give one tap per scale (official: [7, 11, 15, 23] and "
                "[4.0, 2.0, 1.0, 0.5])"
            )
        self.net = net
        self.scales = [float(s) for s in scales]
        strides = [net.patch_size / s for s in self.scales]
        if any(s != int(s) or int(s) & (int(s) - 1) for s in strides):
            raise ValueError(
                f"MODEL.MASK2FORMER.TAP_SCALES={self.scales} with patch {net.patch_size} gives "
                f"strides {strides}; they must be powers of two"
            )
        self.names = [f"res{int(math.log2(s))}" for s in strides]
        self._shapes = {
            n: ShapeSpec(channels=net.embed_dim, stride=int(s)) for n, s in zip(self.names, strides)
        }

    def output_shape(self) -> dict[str, ShapeSpec]:
        return dict(self._shapes)

    @property
    def size_divisibility(self) -> int:
        return max(s.stride for s in self._shapes.values())

    @property
    def padding_constraints(self) -> dict[str, int]:
        return {"size_divisibility": self.size_divisibility, "square_size": 0}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        net = self.net
        # raw block outputs: the ViT's own forward applies the final norm to every tap
        _, kept, (gh, gw) = net._encode(x, None, net.out_indices[-1], net.out_indices)
        feats = {}
        for name, index, scale in zip(self.names, net.out_indices, self.scales):
            tokens = kept[index][:, net.num_prefix_tokens :]
            f = tokens.transpose(1, 2).reshape(x.shape[0], net.embed_dim, gh, gw)
            if scale != 1.0:
                f = F.interpolate(f, scale_factor=scale, mode="bilinear", align_corners=False)
            feats[name] = f
        return feats


def freeze_by_patterns(module: torch.nn.Module, patterns: list[str]) -> list[str]:
    """requires_grad False on every parameter whose name contains one of `patterns`."""
    frozen = []
    for name, p in module.named_parameters():
        if any(pat in name for pat in patterns) and p.requires_grad:
            p.requires_grad_(False)
            frozen.append(name)
    return frozen


@BACKBONE_REGISTRY.register()
def build_soma_vit_taps_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> Backbone:
    """SoMA DINOv2 ViT (pretrained, then adapted) with the four resized raw taps."""
    vit = build_soma_vit(cfg)
    freeze_by_patterns(vit, list(cfg.MODEL.MASK2FORMER.FREEZE_BACKBONE_PATTERNS))
    return ViTTapsBackbone(vit, list(cfg.MODEL.MASK2FORMER.TAP_SCALES))
