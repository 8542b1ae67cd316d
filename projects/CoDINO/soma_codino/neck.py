"""Co-DINO's neck: mmdet's ChannelMapper on the four raw ViT taps (strides 4-32) plus a stride-64 level.

The taps come from soma_d2's `build_soma_vit_taps_backbone` (MODEL.BACKBONE.NAME). Per tap a 1x1
conv without bias + GroupNorm, and one 3x3 stride-2 conv + GroupNorm on the last tap for the
stride-64 level (official: DGOD/configs/_base_/models/dinov2_codetr.py, `neck`: ChannelMapper, kernel_size 1,
GN 32 groups, act_cfg None, num_outs 5).
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["ChannelMapper"]


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
