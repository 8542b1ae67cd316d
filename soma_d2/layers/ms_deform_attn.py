"""Multi-scale deformable attention (Deformable DETR), in pure PyTorch on every device.

Both of the paper's heads rest on this op: Co-DINO's encoder/decoder and Mask2Former's pixel
decoder. It is written once here, with the Deformable-DETR reference conventions, so that the two
heads cannot drift apart and so that one cross-check (against transformers' port of the reference
implementation) covers both. `grid_sample` does the bilinear sampling with zero padding, which is
what the compiled CUDA kernel computes, so results agree up to float rounding on any device.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["multi_scale_deformable_attention", "MultiScaleDeformableAttention"]


def multi_scale_deformable_attention(
    value: torch.Tensor,
    value_spatial_shapes: torch.Tensor | list[tuple[int, int]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Sample every level at learned points and take the attention-weighted sum.

    value (B, S, heads, dim) holds the flattened levels in order; value_spatial_shapes (L, 2) gives
    each level's (H, W); sampling_locations (B, Q, heads, L, points, 2) are (x, y) in [0, 1]
    (points outside sample zeros); attention_weights (B, Q, heads, L, points). Returns
    (B, Q, heads * dim).
    """
    batch, _, heads, dim = value.shape
    _, queries, _, levels, points, _ = sampling_locations.shape
    shapes = [(int(h), int(w)) for h, w in (value_spatial_shapes.tolist()
              if torch.is_tensor(value_spatial_shapes) else value_spatial_shapes)]
    if len(shapes) != levels:
        raise ValueError(f"value_spatial_shapes has {len(shapes)} levels but sampling_locations "
                         f"has {levels}")
    if sum(h * w for h, w in shapes) != value.shape[1]:
        raise ValueError(f"value has {value.shape[1]} tokens but value_spatial_shapes {shapes} "
                         f"sum to {sum(h * w for h, w in shapes)}")
    value_levels = value.split([h * w for h, w in shapes], dim=1)
    grids = 2 * sampling_locations - 1
    sampled = []
    for level, (h, w) in enumerate(shapes):
        # (B, H*W, heads, dim) -> (B*heads, dim, H, W)
        v = value_levels[level].flatten(2).transpose(1, 2).reshape(batch * heads, dim, h, w)
        # (B, Q, heads, points, 2) -> (B*heads, Q, points, 2)
        g = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        sampled.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros",
                                     align_corners=False))
    # (B*heads, dim, Q, L*points) weighted by (B*heads, 1, Q, L*points)
    weights = attention_weights.transpose(1, 2).reshape(batch * heads, 1, queries, levels * points)
    out = (torch.stack(sampled, dim=-2).flatten(-2) * weights).sum(-1)
    return out.view(batch, heads * dim, queries).transpose(1, 2).contiguous()


class MultiScaleDeformableAttention(nn.Module):
    """The MSDA module: offsets and weights predicted from the query, sampled around references.

    Parameter names (`sampling_offsets`, `attention_weights`, `value_proj`, `output_proj`) and the
    initialisation (zero offsets with a radial bias grid, zero attention logits, Xavier value and
    output projections) follow Deformable DETR, mmcv and transformers, so public weights load by
    name. Reference points are (B, Q, L, 2) centres or (B, Q, L, 4) boxes (cx, cy, w, h), in [0, 1].
    No residual or dropout here: the encoder/decoder layers own those.
    """

    def __init__(self, embed_dim: int = 256, num_heads: int = 8, num_levels: int = 4,
                 num_points: int = 4):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim={embed_dim} is not divisible by num_heads={num_heads}")
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.num_levels, self.num_points = num_levels, num_points
        self.sampling_offsets = nn.Linear(embed_dim, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(embed_dim, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(embed_dim, embed_dim)
        self.output_proj = nn.Linear(embed_dim, embed_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.constant_(self.sampling_offsets.weight, 0.0)
        thetas = torch.arange(self.num_heads, dtype=torch.float32) * (2.0 * math.pi / self.num_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = (grid / grid.abs().max(-1, keepdim=True)[0]).view(self.num_heads, 1, 1, 2)
        grid = grid.repeat(1, self.num_levels, self.num_points, 1)
        grid = grid * torch.arange(1, self.num_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.constant_(self.attention_weights.weight, 0.0)
        nn.init.constant_(self.attention_weights.bias, 0.0)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.constant_(self.value_proj.bias, 0.0)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.constant_(self.output_proj.bias, 0.0)

    def forward(
        self,
        query: torch.Tensor,
        reference_points: torch.Tensor,
        value: torch.Tensor,
        spatial_shapes: torch.Tensor | list[tuple[int, int]],
        value_padding_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """query (B, Q, C) (position already added), value (B, S, C); padding mask True = pad."""
        batch, queries, _ = query.shape
        heads, levels, points = self.num_heads, self.num_levels, self.num_points
        v = self.value_proj(value)
        if value_padding_mask is not None:
            v = v.masked_fill(value_padding_mask[..., None], 0.0)
        v = v.view(batch, value.shape[1], heads, self.embed_dim // heads)
        offsets = self.sampling_offsets(query).view(batch, queries, heads, levels, points, 2)
        weights = self.attention_weights(query).view(batch, queries, heads, levels * points)
        weights = weights.softmax(-1).view(batch, queries, heads, levels, points)
        if reference_points.shape[-1] == 2:
            shapes = torch.as_tensor(spatial_shapes, dtype=query.dtype, device=query.device)
            normalizer = shapes.flip(-1).view(1, 1, 1, levels, 1, 2)  # (W, H)
            locations = reference_points[:, :, None, :, None, :] + offsets / normalizer
        elif reference_points.shape[-1] == 4:
            centres = reference_points[:, :, None, :, None, :2]
            sizes = reference_points[:, :, None, :, None, 2:]
            locations = centres + offsets / points * sizes * 0.5
        else:
            raise ValueError("reference_points must end in 2 (x, y) or 4 (cx, cy, w, h); got "
                             f"shape {tuple(reference_points.shape)}")
        out = multi_scale_deformable_attention(v, spatial_shapes, locations, weights)
        return self.output_proj(out)
