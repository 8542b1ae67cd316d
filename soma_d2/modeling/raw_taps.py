"""The official heads' feature forming: raw ViT taps resized by fixed factors, nothing trainable.

Both paper heads (Co-DINO detection, Mask2Former segmentation) read the outputs of blocks
7/11/15/23 after the residual and before any LayerNorm, and only resize them bilinearly
(align_corners False) by x4 / x2 / x1 / x0.5 to strides 4 / 8 / 16 / 32 (official:
`DinoVisionTransformer.forward` in rein/models/backbones/dino_v2.py and
DGOD/rein/models/backbones/dino_v2.py, `out_indices` default [7, 11, 15, 23]). Detectron2's ViTDet
pyramid (convs, deconvs, norms) is a different model, so this backbone only keeps the SoMA ViT
(`.net`, built by `build_soma_vit`: pretrained weights loaded before the decomposition), which puts
its parameters at `backbone.net.*` where the optimizer's backbone rule applies.
"""
from __future__ import annotations

import math

import torch
from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from torch.nn import functional as F

from .backbone import build_soma_vit
from .vit import DinoVisionTransformer

__all__ = ["RawTapBackbone", "build_soma_vit_taps_backbone"]


class RawTapBackbone(Backbone):
    """Resize each raw ViT tap by its factor; outputs `res2`..`res5` (strides 4..32 for patch 16).

    `scales` pairs with `net.out_indices` in order (MODEL.VIT.TAP_SCALES with MODEL.VIT.OUT_INDICES);
    every resulting stride must be a power of two, which the heads' level arithmetic needs.
    """

    def __init__(self, net: DinoVisionTransformer, scales: list[float]):
        super().__init__()
        if len(net.out_indices) != len(scales):
            raise ValueError(
                f"MODEL.VIT.OUT_INDICES has {len(net.out_indices)} entries but "
                f"MODEL.VIT.TAP_SCALES has {len(scales)}; give one tap per scale (official: "
                "[7, 11, 15, 23] and [4.0, 2.0, 1.0, 0.5])"
            )
        self.net = net
        self.scales = [float(s) for s in scales]
        strides = [net.patch_size / s for s in self.scales]
        if any(s != int(s) or int(s) & (int(s) - 1) for s in strides):
            raise ValueError(
                f"MODEL.VIT.TAP_SCALES={self.scales} with patch {net.patch_size} gives strides "
                f"{strides}; they must be powers of two (official: patch 16, [4.0, 2.0, 1.0, 0.5])"
            )
        self.names = [f"res{int(math.log2(s))}" for s in strides]
        self._shapes = {
            n: ShapeSpec(channels=net.embed_dim, stride=int(s)) for n, s in zip(self.names, strides)
        }

    @property
    def channels(self) -> int:
        """Width of every output map (the ViT's embedding width)."""
        return self.net.embed_dim

    @property
    def strides(self) -> list[int]:
        """Output strides in the order of `names` (finest first for the official factors)."""
        return [self._shapes[n].stride for n in self.names]

    def output_shape(self) -> dict[str, ShapeSpec]:
        return dict(self._shapes)

    @property
    def size_divisibility(self) -> int:
        return max(self.strides)

    @property
    def padding_constraints(self) -> dict[str, int]:
        return {"size_divisibility": self.size_divisibility, "square_size": 0}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        maps = self.net.intermediate_maps(x, norm=False)
        feats = {}
        for name, fmap, scale in zip(self.names, maps, self.scales):
            if scale != 1.0:
                fmap = F.interpolate(fmap, scale_factor=scale, mode="bilinear", align_corners=False)
            feats[name] = fmap
        return feats


@BACKBONE_REGISTRY.register()
def build_soma_vit_taps_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> Backbone:
    """Registered builder: SoMA DINOv2 ViT (pretrained, then adapted) with the resized raw taps."""
    return RawTapBackbone(build_soma_vit(cfg), list(cfg.MODEL.VIT.TAP_SCALES))
