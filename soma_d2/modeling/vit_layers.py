"""Building blocks of the DINOv2 ViT (attention, FFNs, layer-scale, drop path, block).

Where timm already has the identical layer (patch projection, GELU MLP, packed SwiGLU,
layer-scale, drop path) it is used, with DINOv2's parameter names; the attention stays ours.

Every learnable projection is its own ``nn.Linear`` called as a module (``self.q(x)``), because the
SoMA core swaps those modules for adapted ones with the same forward. The pure tensor helpers
(position-embedding and patch-kernel resampling) live in ``soma_d2.layers.vit_tensors``, which the
weight loader uses too without importing this package (and Detectron2 with it).
"""
from __future__ import annotations

import timm.layers as timm_layers
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "Attention",
    "Block",
    "SeparateQKVAttention",
]


def layer_scale(dim: int, init: float | None) -> nn.Module:
    """A block's ``ls1``/``ls2``: timm's ``LayerScale`` at ``init``, or identity when it is off."""
    return timm_layers.LayerScale(dim, init_values=float(init)) if init else nn.Identity()


class SeparateQKVAttention(nn.Module):
    """Separate ``q``, ``k``, ``v``, ``proj`` linears and the fused SDPA, shared by both ViTs.

    The DINOv2 and DINOv3 attentions differ only in their biases and in DINOv3's RoPE between the
    head split and the SDPA, so the projections, the split into heads and the attention itself
    live here once.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool, key_bias: bool,
                 proj_bias: bool, attn_drop: float) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.attn_drop = attn_drop
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.k = nn.Linear(dim, dim, bias=key_bias)
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)

    def split_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v of tokens ``(B, N, D)``, each ``(B, heads, N, D / heads)``."""
        return tuple(
            proj(x).unflatten(-1, (self.num_heads, -1)).transpose(1, 2)
            for proj in (self.q, self.k, self.v)
        )

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """SDPA of per-head q, k, v (dropout only in training), merged and projected."""
        batch, _, tokens, _ = q.shape
        drop = self.attn_drop if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, -1))


class Attention(SeparateQKVAttention):
    """Multi-head self-attention with separate q, k, v linears and fused SDPA kernels.

    DINOv2 stores a fused ``qkv``; it is split at load time so that each projection gets its own
    SVD-based adapter.
    """

    def __init__(
        self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0
    ) -> None:
        super().__init__(dim, num_heads, qkv_bias, qkv_bias, True, attn_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attend(*self.split_heads(x))


class Block(nn.Module):
    """Pre-norm transformer block with layer-scale, laid out like DINOv2's ``NestedTensorBlock``."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        ffn_hidden: int,
        ffn_layer: str = "mlp",
        qkv_bias: bool = True,
        layer_scale_init: float | None = 1e-5,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias)
        self.ls1 = layer_scale(dim, layer_scale_init)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        if ffn_layer == "mlp":
            self.mlp: nn.Module = timm_layers.Mlp(dim, ffn_hidden, act_layer=nn.GELU)
        elif ffn_layer == "swiglu":
            # DINOv2's SwiGLUFFNFused: fc1 is the fused w12 (gate half first, SiLU on it), fc2 w3
            self.mlp = timm_layers.GluMlp(dim, 2 * ffn_hidden, act_layer=nn.SiLU, gate_last=False)
        else:
            raise ValueError(f"ffn_layer must be 'mlp' or 'swiglu', got {ffn_layer!r}")
        self.ls2 = layer_scale(dim, layer_scale_init)
        self.drop_path = timm_layers.DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.ls1(self.attn(self.norm1(x))))
        return x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))
