"""Co-DINO's deformable transformer: post-norm MSDA encoder, two-stage proposals, DINO decoder.

Official (DGOD/projects/CO_DETR/codetr/transformer.py, CoDinoTransformer, with
DGOD/configs/_base_/models/dinov2_codetr.py): 5 levels, 8 heads, 4 points, FFN 2048, no dropout; encoder queries get a
temperature-20 sine encoding plus a level embedding; the decoder regenerates each layer's
positional query from the current reference box (512-dim sine embedding, y/x/w/h order, through
`ref_point_head`), refines boxes layer by layer (detached between layers) and returns the
un-detached refined boxes for look-forward-twice predictions. The encoder layer, the attention op,
the sine encodings and `inverse_sigmoid` are `soma_d2.layers`' (shared with Mask2Former).
"""
from __future__ import annotations

import torch
from torch import nn

from soma_d2.layers import (
    FFN,
    DeformableEncoderLayer,
    MultiScaleDeformableAttention,
    box_sine_embedding,
    encoder_reference_points,
    inverse_sigmoid,
)
from soma_d2.modeling.checkpointing import checkpoint_call, resolve_checkpoint_count

__all__ = ["DeformableEncoder", "DinoDecoder", "encoder_proposals"]


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


class _LayerStack(nn.Module):
    """`num_layers` fresh `layer_type(dim, heads, levels, points, ffn_dim)` as `layers` (the
    decoder's stack; the encoder's has the same arguments and parameter names)."""

    layer_type: type[nn.Module]

    def __init__(self, num_layers: int, dim: int, heads: int, levels: int, points: int,
                 ffn_dim: int):
        super().__init__()
        self.layers = nn.ModuleList(
            self.layer_type(dim, heads, levels, points, ffn_dim) for _ in range(num_layers))


class DeformableEncoder(nn.Module):
    """`num_layers` post-norm MSDA layers (soma_d2's `DeformableEncoderLayer`, mmdet parameter
    names) over every pixel of every level, each querying at its pixel centre; the first
    `checkpoint_layers` layers recompute their activations in backward (upstream Co-DINO `with_cp`;
    `soma_d2.modeling.checkpointing`)."""

    def __init__(self, num_layers: int, dim: int, heads: int, levels: int, points: int,
                 ffn_dim: int, checkpoint_layers: int = 0):
        super().__init__()
        self.layers = nn.ModuleList(
            DeformableEncoderLayer(dim, heads, levels, points, ffn_dim, param_layout="mmdet")
            for _ in range(num_layers))
        self.checkpoint_layers = resolve_checkpoint_count(checkpoint_layers, num_layers,
                                                          "checkpoint_layers")

    def forward(self, x, pos, shapes):
        refs = encoder_reference_points(shapes, x.shape[0], x.device).to(x.dtype)
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
        self.ffn = FFN(dim, ffn_dim)
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
