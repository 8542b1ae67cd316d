"""Sine position encodings of feature maps and of boxes, shared by the paper's two heads.

`sine_position_encoding` is DETR's / mmdet's normalised `SinePositionalEncoding` of an unpadded
map (Co-DINO's encoder at temperature 20, Mask2Former's pixel and transformer decoders at 10000);
`box_sine_embedding` is DINO's `gen_sineembed_for_position` (y, x, w, h order) and Co-DETR's
auxiliary `get_proposal_pos_embed` (x, y, w, h order) of normalised boxes.
"""
from __future__ import annotations

import math

import torch

__all__ = ["box_sine_embedding", "sine_position_encoding"]


def _dim_t(num_feats: int, temperature: float, device, dtype) -> torch.Tensor:
    dim_t = torch.arange(num_feats, device=device, dtype=dtype)
    return temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_feats)


def sine_position_encoding(
    batch: int, height: int, width: int, num_feats: int, device: torch.device,
    dtype: torch.dtype = torch.float32, temperature: float = 10000.0, scale: float = 2 * math.pi,
    eps: float = 1e-6, offset: float = 0.0,
) -> torch.Tensor:
    """(B, 2 * num_feats, H, W), channels cat(pos_y, pos_x), each interleaving sin / cos of the
    1-based row / column index plus `offset`, normalised by the last index (normalize=True)."""
    y = torch.arange(1, height + 1, device=device, dtype=dtype)
    x = torch.arange(1, width + 1, device=device, dtype=dtype)
    y = (y + offset) / (y[-1] + eps) * scale
    x = (x + offset) / (x[-1] + eps) * scale
    dim_t = _dim_t(num_feats, temperature, device, dtype)
    pos_y = y[:, None] / dim_t  # (H, F)
    pos_x = x[:, None] / dim_t  # (W, F)
    pos_y = torch.stack((pos_y[:, 0::2].sin(), pos_y[:, 1::2].cos()), dim=2).flatten(1)
    pos_x = torch.stack((pos_x[:, 0::2].sin(), pos_x[:, 1::2].cos()), dim=2).flatten(1)
    pos = torch.cat(
        (pos_y[:, None, :].expand(height, width, -1), pos_x[None, :, :].expand(height, width, -1)),
        dim=2,
    )
    return pos.permute(2, 0, 1)[None].expand(batch, -1, -1, -1)


def _sine(coord: torch.Tensor, num_feats: int, temperature: float) -> torch.Tensor:
    dim_t = _dim_t(num_feats, temperature, coord.device, torch.float32)
    pos = coord[..., None] * (2 * math.pi) / dim_t
    return torch.stack((pos[..., 0::2].sin(), pos[..., 1::2].cos()), dim=-1).flatten(-2)


def box_sine_embedding(boxes: torch.Tensor, num_feats: int, temperature: float = 10000.0,
                       order: str = "yxwh") -> torch.Tensor:
    """Sine embedding of (cx, cy, w, h) in [0, 1], `num_feats` per coordinate, concatenated in
    `order` (DINO's gen_sineembed_for_position: y, x, w, h; Co-DETR's aux get_proposal_pos_embed:
    x, y, w, h)."""
    index = {"x": 0, "y": 1, "w": 2, "h": 3}
    return torch.cat([_sine(boxes[..., index[c]], num_feats, temperature) for c in order], -1)
