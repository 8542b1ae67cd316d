"""The post-norm deformable encoder layer both heads run on their multi-scale maps, and its queries'
reference points.

One layer, x = LN1(x + MSDA(x + pos, refs, x)); x = LN2(x + FFN(x)) with a ReLU FFN and no
dropout (official: mmdet's `DeformableDetrTransformerEncoderLayer`, used by Co-DINO's encoder,
DGOD/projects/CO_DETR/codetr/transformer.py, and by Mask2Former's pixel decoder, mmdet
`MSDeformAttnPixelDecoder`). The two heads' checkpoints name the same parameters differently, and
their converters (transformers / mmdet key maps) depend on the names, so the layer keeps either
layout: `param_layout="mmdet"` gives `self_attn`, `norm1`, `ffn.layers.{0,2}`, `norm2` (Co-DINO),
`"mask2former"` gives `attn`, `norm1`, `fc1`, `fc2`, `norm2`. Both compute the same function.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .ms_deform_attn import MultiScaleDeformableAttention

__all__ = ["FFN", "DeformableEncoderLayer", "encoder_reference_points"]

PARAM_LAYOUTS = ("mmdet", "mask2former")


class FFN(nn.Module):
    """mmdet's `FFN` (2 layers, ReLU, no dropout) with its identity shortcut: x + fc2(relu(fc1(x)))."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(inplace=True),
                                    nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.layers(x)


class DeformableEncoderLayer(nn.Module):
    """Post-norm MSDA encoder layer (see the module doc for `param_layout`)."""

    def __init__(self, dim: int, heads: int, levels: int, points: int, ffn_dim: int,
                 param_layout: str = "mmdet"):
        super().__init__()
        if param_layout not in PARAM_LAYOUTS:
            raise ValueError(f"param_layout must be one of {PARAM_LAYOUTS}, got {param_layout!r}")
        self.param_layout = param_layout
        attn = MultiScaleDeformableAttention(dim, heads, levels, points)
        if param_layout == "mmdet":
            self.self_attn = attn
            self.norm1 = nn.LayerNorm(dim)
            self.ffn = FFN(dim, ffn_dim)
        else:
            self.attn = attn
            self.norm1 = nn.LayerNorm(dim)
            self.fc1 = nn.Linear(dim, ffn_dim)
            self.fc2 = nn.Linear(ffn_dim, dim)
        self.norm2 = nn.LayerNorm(dim)

    @property
    def attention(self) -> MultiScaleDeformableAttention:
        """The layer's MSDA, whichever name the parameter layout gives it."""
        return self.self_attn if self.param_layout == "mmdet" else self.attn

    def forward(self, x: torch.Tensor, pos: torch.Tensor, reference_points: torch.Tensor,
                spatial_shapes: list[tuple[int, int]]) -> torch.Tensor:
        x = self.norm1(x + self.attention(x + pos, reference_points, x, spatial_shapes))
        if self.param_layout == "mmdet":
            return self.norm2(self.ffn(x))
        return self.norm2(x + self.fc2(F.relu(self.fc1(x))))


def encoder_reference_points(shapes: list[tuple[int, int]], batch: int, device: torch.device,
                             dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Pixel centres of every level normalised to [0, 1] as (x, y), repeated over the levels:
    (B, S, L, 2), S = sum of h * w (mmdet `get_encoder_reference_points` without padding)."""
    refs = []
    for h, w in shapes:
        ry, rx = torch.meshgrid(
            torch.linspace(0.5, h - 0.5, h, device=device, dtype=dtype) / h,
            torch.linspace(0.5, w - 0.5, w, device=device, dtype=dtype) / w,
            indexing="ij",
        )
        refs.append(torch.stack((rx.reshape(-1), ry.reshape(-1)), -1))
    ref = torch.cat(refs, 0)
    return ref[None, :, None, :].expand(batch, -1, len(shapes), -1)
