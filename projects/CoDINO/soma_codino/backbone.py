"""Co-DINO's features: four raw ViT taps resized to strides 4-32, and the ChannelMapper neck.

The official DINOv2 wrapper hands the detector the outputs of blocks 7/11/15/23 after the residual
and before any LayerNorm (soma_d2's `DinoVisionTransformer.forward` applies the final norm, which is
DINOv2's intermediate-layer convention, so the raw tokens are taken from its block loop here), and
resizes them bilinearly by x4, x2, x1, x0.5. The ViT is built by soma_d2's `build_soma_vit`, which
loads DINOv2 before the SoMA decomposition; it sits at `backbone.net` so the optimizer's backbone
rule (lr x0.5, decay x0.2) applies. ChannelMapper: per tap a 1x1 conv without bias + GroupNorm, and
one 3x3 stride-2 conv + GroupNorm on the last tap for the stride-64 level.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from detectron2.config import CfgNode
from torch import nn

from soma_d2.modeling import build_soma_vit

__all__ = ["RawTapBackbone", "ChannelMapper"]


class RawTapBackbone(nn.Module):
    """ViT (`net`) -> 4 un-normalised tap maps resized by `scales` (bilinear, no corner align)."""

    def __init__(self, net: nn.Module, scales: list[float]):
        super().__init__()
        self.net = net
        self.scales = [float(s) for s in scales]
        self.out_indices = list(net.out_indices)
        self.channels = net.embed_dim

    @property
    def strides(self) -> list[int]:
        return [int(round(self.net.patch_size / s)) for s in self.scales]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        net = self.net
        batch = x.shape[0]
        _, kept, (gh, gw) = net._encode(x, None, self.out_indices[-1], self.out_indices)
        maps = []
        for index, scale in zip(self.out_indices, self.scales):
            tokens = kept[index][:, net.num_prefix_tokens:]
            fmap = tokens.transpose(1, 2).reshape(batch, net.embed_dim, gh, gw)
            if scale != 1.0:
                fmap = F.interpolate(fmap, scale_factor=scale, mode="bilinear",
                                     align_corners=False)
            maps.append(fmap)
        return maps

    @classmethod
    def from_config(cls, cfg: CfgNode) -> RawTapBackbone:
        return cls(build_soma_vit(cfg), list(cfg.MODEL.CODINO.TAP_SCALES))


class ChannelMapper(nn.Module):
    """mmdet ChannelMapper (kernel 1, GN, no act, num_outs = inputs + 1), Xavier-uniform convs."""

    def __init__(self, in_channels: list[int], out_channels: int, gn_groups: int):
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, out_channels, 1, bias=False),
                          nn.GroupNorm(gn_groups, out_channels)) for c in in_channels)
        self.extra = nn.Sequential(
            nn.Conv2d(in_channels[-1], out_channels, 3, stride=2, padding=1, bias=False),
            nn.GroupNorm(gn_groups, out_channels))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)

    def forward(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        outs = [conv(x) for conv, x in zip(self.convs, inputs)]
        outs.append(self.extra(inputs[-1]))
        return outs
