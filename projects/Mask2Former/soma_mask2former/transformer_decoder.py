"""Mask2Former's masked-attention transformer decoder (mmdet `Mask2FormerTransformerDecoder`).

`num_queries` learnable queries (content `query_feat`, positional `query_embed`) pass `num_layers`
post-norm layers (masked cross-attention -> LN -> self-attention -> LN -> FFN -> LN). Layer i
attends to memory level i mod 3 (strides 32 -> 16 -> 8 -> ...), with the sine encoding added to the
keys and `level_embed` to the memory. Its attention mask comes from the previous prediction: mask
logits resized to that level, positions with sigmoid < 0.5 masked, fully masked rows unmasked,
detached. A shared `post_norm` precedes every prediction (the initial one included): class logits
(`cls_embed`, num_classes + 1 with no-object) and mask logits (3-layer MLP `mask_embed` dotted with
the stride-4 mask features). It returns all `num_layers + 1` prediction sets (deep supervision).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from soma_d2.layers import sine_position_encoding

__all__ = ["MaskedAttentionDecoder"]


class MaskedDecoderLayer(nn.Module):
    """cross-attention -> LN -> self-attention -> LN -> FFN -> LN (post-norm), dropout 0."""

    def __init__(self, dim: int, heads: int, ffn_dim: int):
        super().__init__()
        self.cross_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm1 = nn.LayerNorm(dim)
        self.self_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, q, query_pos, memory, memory_pos, attn_mask):
        k = memory + memory_pos
        q = self.norm1(q + self.cross_attn(q + query_pos, k, memory, attn_mask=attn_mask,
                                           need_weights=False)[0])
        qk = q + query_pos
        q = self.norm2(q + self.self_attn(qk, qk, q, need_weights=False)[0])
        return self.norm3(q + self.fc2(F.relu(self.fc1(q))))


class MaskedAttentionDecoder(nn.Module):
    """See the module doc."""

    def __init__(self, num_classes: int, dim: int = 256, num_queries: int = 100, heads: int = 8,
                 ffn_dim: int = 2048, num_layers: int = 9, num_levels: int = 3,
                 mask_dim: int = 256):
        super().__init__()
        self.num_heads = heads
        self.num_levels = num_levels
        self.query_feat = nn.Embedding(num_queries, dim)
        self.query_embed = nn.Embedding(num_queries, dim)
        self.level_embed = nn.Embedding(num_levels, dim)
        self.layers = nn.ModuleList(
            MaskedDecoderLayer(dim, heads, ffn_dim) for _ in range(num_layers)
        )
        self.post_norm = nn.LayerNorm(dim)
        self.cls_embed = nn.Linear(dim, num_classes + 1)
        self.mask_embed = nn.Sequential(
            nn.Linear(dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, dim), nn.ReLU(inplace=True),
            nn.Linear(dim, mask_dim),
        )
        for p in self.layers.parameters():
            if p.dim() > 1:
                nn.init.xavier_normal_(p)

    def predict(self, q: torch.Tensor, mask_features: torch.Tensor, size) -> tuple:
        """(class logits, mask logits, attention mask for a level of `size`)."""
        q = self.post_norm(q)
        cls = self.cls_embed(q)
        masks = torch.einsum("bqc,bchw->bqhw", self.mask_embed(q), mask_features)
        attn = F.interpolate(masks, size=size, mode="bilinear", align_corners=False)
        attn = attn.flatten(2).unsqueeze(1).repeat(1, self.num_heads, 1, 1).flatten(0, 1)
        attn = (attn.sigmoid() < 0.5).detach()
        return cls, masks, attn

    def forward(self, memories: list[torch.Tensor], mask_features: torch.Tensor
                ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """memories coarsest first (B, C, h, w) -> [(cls (B, Q, K+1), masks (B, Q, H, W))] for
        the initial queries and every layer."""
        batch = mask_features.shape[0]
        mem, mem_pos, sizes = [], [], []
        for i, m in enumerate(memories[: self.num_levels]):
            h, w = m.shape[-2:]
            sizes.append((h, w))
            pos = sine_position_encoding(batch, h, w, m.shape[1] // 2, m.device, m.dtype)
            mem_pos.append(pos.flatten(2).transpose(1, 2))
            mem.append(m.flatten(2).transpose(1, 2) + self.level_embed.weight[i][None, None])
        q = self.query_feat.weight[None].expand(batch, -1, -1)
        query_pos = self.query_embed.weight[None].expand(batch, -1, -1)
        cls, masks, attn = self.predict(q, mask_features, sizes[0])
        outputs = [(cls, masks)]
        for i, layer in enumerate(self.layers):
            level = i % self.num_levels
            attn = attn & ~attn.all(-1, keepdim=True)  # a fully masked row attends everywhere
            q = layer(q, query_pos, mem[level], mem_pos[level], attn)
            cls, masks, attn = self.predict(q, mask_features, sizes[(i + 1) % self.num_levels])
            outputs.append((cls, masks))
        return outputs
