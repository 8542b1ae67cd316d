"""Mask2Former's deformable pixel decoder (mmdet `MSDeformAttnPixelDecoder`, official values).

The three coarsest inputs (strides 32, 16, 8, in that order) go through a 1x1 conv + GroupNorm to
`dim` channels and a post-norm deformable encoder (MSDA -> LN -> FFN -> LN) whose queries are every
pixel of every level (reference points at pixel centres, sine position encoding plus a learnable
`level_encoding`). The finer inputs (stride 4) join through an FPN step: lateral 1x1 conv + GN plus
the bilinearly upsampled stride-8 output, then a 3x3 conv + GN + ReLU. `mask_feature` (1x1 conv)
of the finest map gives the stride-4 mask features. The encoder layer (Mask2Former parameter
names), its reference points, the sine encoding and the MSDA op are `soma_d2.layers`', shared with
the detector.
"""
from __future__ import annotations

import torch
from fvcore.nn.weight_init import c2_xavier_fill
from torch import nn
from torch.nn import functional as F

from soma_d2.layers import DeformableEncoderLayer, encoder_reference_points, sine_position_encoding

__all__ = ["MSDeformAttnPixelDecoder"]


def _conv_gn(cin: int, cout: int, groups: int, kernel: int = 1, bias: bool = True,
             relu: bool = False) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=bias),
              nn.GroupNorm(groups, cout)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class MSDeformAttnPixelDecoder(nn.Module):
    """See the module doc. `in_channels` lists the inputs finest first (strides 4, 8, 16, 32)."""

    def __init__(self, in_channels: list[int], dim: int = 256, mask_dim: int = 256,
                 num_levels: int = 3, heads: int = 8, points: int = 4, ffn_dim: int = 1024,
                 num_layers: int = 6, groups: int = 32):
        super().__init__()
        if len(in_channels) < num_levels:
            raise ValueError(f"the pixel decoder needs at least {num_levels} input levels, got "
                             f"{len(in_channels)}")
        self.num_levels = num_levels
        self.num_fpn = len(in_channels) - num_levels
        # encoder levels, coarsest first
        self.input_convs = nn.ModuleList(
            _conv_gn(c, dim, groups) for c in in_channels[::-1][:num_levels]
        )
        self.level_encoding = nn.Embedding(num_levels, dim)
        self.encoder = nn.ModuleList(
            DeformableEncoderLayer(dim, heads, num_levels, points, ffn_dim,
                                   param_layout="mask2former")
            for _ in range(num_layers)
        )
        # FPN levels, coarsest first (official: the single stride-4 level)
        fpn_in = in_channels[: self.num_fpn][::-1]
        self.lateral_convs = nn.ModuleList(_conv_gn(c, dim, groups, bias=False) for c in fpn_in)
        self.output_convs = nn.ModuleList(
            _conv_gn(dim, dim, groups, kernel=3, bias=False, relu=True) for _ in fpn_in
        )
        self.mask_feature = nn.Conv2d(dim, mask_dim, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The official init: xavier-uniform input convs, caffe2-xavier FPN/mask convs, N(0, 1)
        level encoding, xavier-normal encoder matrices then MSDA's own init."""
        for seq in self.input_convs:
            nn.init.xavier_uniform_(seq[0].weight, gain=1)
            nn.init.constant_(seq[0].bias, 0)
        for seq in [*self.lateral_convs, *self.output_convs]:
            c2_xavier_fill(seq[0])
        c2_xavier_fill(self.mask_feature)
        nn.init.normal_(self.level_encoding.weight)
        for p in self.encoder.parameters():
            if p.dim() > 1:
                nn.init.xavier_normal_(p)
        for layer in self.encoder:
            layer.attn.reset_parameters()

    def forward(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """features finest first -> (mask features at the finest stride, encoder outputs
        coarsest first, the memories of the transformer decoder)."""
        batch = features[0].shape[0]
        coarse = features[::-1][: self.num_levels]
        srcs, poss, shapes = [], [], []
        for i, x in enumerate(coarse):
            y = self.input_convs[i](x)
            h, w = y.shape[-2:]
            pos = sine_position_encoding(batch, h, w, y.shape[1] // 2, y.device, y.dtype)
            srcs.append(y.flatten(2).transpose(1, 2))
            poss.append(pos.flatten(2).transpose(1, 2) + self.level_encoding.weight[i][None, None])
            shapes.append((h, w))
        x = torch.cat(srcs, 1)
        pos = torch.cat(poss, 1)
        ref = encoder_reference_points(shapes, batch, x.device, x.dtype)
        for layer in self.encoder:
            x = layer(x, pos, ref, shapes)
        outs = [
            t.transpose(1, 2).reshape(batch, -1, h, w)
            for t, (h, w) in zip(x.split([h * w for h, w in shapes], 1), shapes)
        ]
        fine = features[: self.num_fpn][::-1]
        last = outs[-1]
        for feat, lateral, output in zip(fine, self.lateral_convs, self.output_convs):
            y = lateral(feat)
            last = output(y + F.interpolate(last, size=y.shape[-2:], mode="bilinear",
                                            align_corners=False))
        return self.mask_feature(last), outs
