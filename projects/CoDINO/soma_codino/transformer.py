"""Co-DINO's deformable transformer: post-norm MSDA encoder, two-stage proposals, DINO decoder.

Fact sheet section 1.4: 5 levels, 8 heads, 4 points, FFN 2048, no dropout; encoder queries get a
temperature-20 sine encoding plus a level embedding; the decoder regenerates each layer's
positional query from the current reference box (512-dim sine embedding, y/x/w/h order, through
`ref_point_head`), refines boxes layer by layer (detached between layers) and returns the
un-detached refined boxes for look-forward-twice predictions. The attention op is
`soma_d2.layers.MultiScaleDeformableAttention`.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from soma_d2.layers import MultiScaleDeformableAttention
from soma_d2.modeling.checkpointing import checkpoint_call, resolve_checkpoint_count

from .losses import inverse_sigmoid

__all__ = [
    "DeformableEncoder",
    "DinoDecoder",
    "box_sine_embedding",
    "encoder_proposals",
    "sine_position_encoding",
]


def sine_position_encoding(batch: int, height: int, width: int, num_feats: int,
                           temperature: float, device: torch.device, scale: float = 2 * math.pi,
                           eps: float = 1e-6, offset: float = 0.0) -> torch.Tensor:
    """mmdet `SinePositionalEncoding` (normalize=True) of an unpadded map: (B, 2F, H, W),
    channels cat(pos_y, pos_x), each interleaving sin/cos."""
    ones = torch.ones(1, height, width, device=device)
    y = ones.cumsum(1)
    x = ones.cumsum(2)
    y = (y + offset) / (y[:, -1:, :] + eps) * scale
    x = (x + offset) / (x[:, :, -1:] + eps) * scale
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=device)
    dim_t = temperature ** (2 * (dim_t // 2) / num_feats)
    pos_x = x[..., None] / dim_t
    pos_y = y[..., None] / dim_t
    pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).flatten(3)
    pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).flatten(3)
    return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2).expand(batch, -1, -1, -1)


def _sine(coord: torch.Tensor, num_feats: int, temperature: float) -> torch.Tensor:
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=coord.device)
    dim_t = temperature ** (2 * (dim_t // 2) / num_feats)
    pos = coord[..., None] * (2 * math.pi) / dim_t
    return torch.stack((pos[..., 0::2].sin(), pos[..., 1::2].cos()), dim=-1).flatten(-2)


def box_sine_embedding(boxes: torch.Tensor, num_feats: int, temperature: float = 10000.0,
                       order: str = "yxwh") -> torch.Tensor:
    """Sine embedding of (cx, cy, w, h) in [0, 1], `num_feats` per coordinate, concatenated in
    `order` (DINO's gen_sineembed_for_position: y, x, w, h; Co-DETR's aux get_proposal_pos_embed:
    x, y, w, h)."""
    index = {"x": 0, "y": 1, "w": 2, "h": 3}
    return torch.cat([_sine(boxes[..., index[c]], num_feats, temperature) for c in order], -1)


def encoder_proposals(memory: torch.Tensor, shapes: list[tuple[int, int]]
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """mmdet `gen_encoder_output_proposals` without padding: per pixel a box at the pixel centre
    of side 0.05 * 2^level; boxes with any coordinate outside (0.01, 0.99) are invalid (logit
    +inf, memory zeroed). Returns (masked memory, proposal logits (B, S, 4))."""
    proposals = []
    for level, (h, w) in enumerate(shapes):
        ys, xs = torch.meshgrid(
            torch.arange(h, dtype=memory.dtype, device=memory.device),
            torch.arange(w, dtype=memory.dtype, device=memory.device), indexing="ij")
        centre = torch.stack([(xs + 0.5) / w, (ys + 0.5) / h], -1).view(-1, 2)
        size = torch.full_like(centre, 0.05 * 2.0 ** level)
        proposals.append(torch.cat([centre, size], -1))
    proposals = torch.cat(proposals, 0)[None].expand(memory.shape[0], -1, -1)
    valid = ((proposals > 0.01) & (proposals < 0.99)).all(-1, keepdim=True)
    logits = torch.log(proposals / (1 - proposals))
    logits = logits.masked_fill(~valid, float("inf"))
    return memory.masked_fill(~valid, 0.0), logits


class _FFN(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(inplace=True),
                                    nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.layers(x)


class EncoderLayer(nn.Module):
    """(MSDA self-attention, norm, FFN, norm), post-norm."""

    def __init__(self, dim: int, heads: int, levels: int, points: int, ffn_dim: int):
        super().__init__()
        self.self_attn = MultiScaleDeformableAttention(dim, heads, levels, points)
        self.norm1 = nn.LayerNorm(dim)
        self.ffn = _FFN(dim, ffn_dim)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x, pos, refs, shapes):
        x = self.norm1(x + self.self_attn(x + pos, refs, x, shapes))
        return self.norm2(self.ffn(x))


class _LayerStack(nn.Module):
    """`num_layers` fresh `layer_type(dim, heads, levels, points, ffn_dim)` as `layers`: how the
    encoder and the decoder both build their stacks (same arguments, same parameter names)."""

    layer_type: type[nn.Module]

    def __init__(self, num_layers: int, dim: int, heads: int, levels: int, points: int,
                 ffn_dim: int):
        super().__init__()
        self.layers = nn.ModuleList(
            self.layer_type(dim, heads, levels, points, ffn_dim) for _ in range(num_layers))


class DeformableEncoder(_LayerStack):
    """Post-norm MSDA encoder; its first `checkpoint_layers` layers recompute their activations in
    backward (upstream Co-DINO `with_cp`; `soma_d2.modeling.checkpointing`)."""

    layer_type = EncoderLayer

    def __init__(self, num_layers: int, dim: int, heads: int, levels: int, points: int,
                 ffn_dim: int, checkpoint_layers: int = 0):
        super().__init__(num_layers, dim, heads, levels, points, ffn_dim)
        self.checkpoint_layers = resolve_checkpoint_count(checkpoint_layers, num_layers,
                                                          "checkpoint_layers")

    @staticmethod
    def reference_points(shapes: list[tuple[int, int]], batch: int, device: torch.device
                         ) -> torch.Tensor:
        """Pixel centres normalised per level, repeated over levels: (B, S, L, 2)."""
        refs = []
        for h, w in shapes:
            ys, xs = torch.meshgrid(torch.arange(h, device=device, dtype=torch.float32) + 0.5,
                                    torch.arange(w, device=device, dtype=torch.float32) + 0.5,
                                    indexing="ij")
            refs.append(torch.stack([xs.flatten() / w, ys.flatten() / h], -1))
        refs = torch.cat(refs, 0)
        return refs[None, :, None].expand(batch, -1, len(shapes), -1)

    def forward(self, x, pos, shapes):
        refs = self.reference_points(shapes, x.shape[0], x.device).to(x.dtype)
        for index, layer in enumerate(self.layers):
            x = checkpoint_call(layer, x, pos, refs, shapes,
                                enabled=index < self.checkpoint_layers)
        return x


class DecoderLayer(nn.Module):
    """(self-attention, norm, MSDA cross-attention, norm, FFN, norm)."""

    def __init__(self, dim: int, heads: int, levels: int, points: int, ffn_dim: int):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=0.0, batch_first=True)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn = MultiScaleDeformableAttention(dim, heads, levels, points)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = _FFN(dim, ffn_dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, q, pos, refs, memory, shapes, attn_mask=None):
        qk = q + pos
        q = self.norm1(q + self.self_attn(qk, qk, q, attn_mask=attn_mask, need_weights=False)[0])
        q = self.norm2(q + self.cross_attn(q + pos, refs, memory, shapes))
        return self.norm3(self.ffn(q))


class DinoDecoder(_LayerStack):
    """DINO decoder with per-layer box refinement; `norm` is the shared output LayerNorm."""

    layer_type = DecoderLayer

    def __init__(self, num_layers: int, dim: int, heads: int, levels: int, points: int,
                 ffn_dim: int):
        super().__init__(num_layers, dim, heads, levels, points, ffn_dim)
        self.dim = dim
        self.num_levels = levels
        self.ref_point_head = nn.Sequential(nn.Linear(2 * dim, dim), nn.ReLU(inplace=True),
                                            nn.Linear(dim, dim))
        self.norm = nn.LayerNorm(dim)

    def forward(self, query: torch.Tensor, reference: torch.Tensor, memory: torch.Tensor,
                shapes: list[tuple[int, int]], reg_branches: nn.ModuleList,
                attn_mask: torch.Tensor | None = None
                ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """query (B, Q, C), reference (B, Q, 4) sigmoid boxes. Returns the normed output of each
        layer and [initial ref, refined ref after each layer] (refined ones not detached)."""
        outputs, refs = [], [reference]
        for index, layer in enumerate(self.layers):
            pos = self.ref_point_head(box_sine_embedding(reference, self.dim // 2, 10000.0))
            ref_input = reference[:, :, None].expand(-1, -1, self.num_levels, -1)
            query = layer(query, pos, ref_input, memory, shapes, attn_mask)
            new_ref = (reg_branches[index](query) + inverse_sigmoid(reference)).sigmoid()
            outputs.append(self.norm(query))
            refs.append(new_ref)
            reference = new_ref.detach()
        return outputs, refs
