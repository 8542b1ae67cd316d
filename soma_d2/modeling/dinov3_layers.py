"""Building blocks of the DINOv3 ViT: 2-D RoPE, attention with RoPE, SwiGLU FFN, block.

DINOv3 has no absolute position embedding; each patch token's query and key are rotated by an
angle that depends on the patch centre's normalised coordinates (``RopePositionEmbedding`` of the
official release, ``RotaryEmbeddingDinoV3`` in timm, ``DINOv3ViTRopePositionEmbedding`` in HF).
The rotation is computed from the grid of the input at hand, so any input size is served exactly
(no table to interpolate). As in the DINOv2 blocks, every learnable projection is its own
``nn.Linear`` called as a module, because the SoMA core swaps those modules for adapted ones.
"""
from __future__ import annotations

import math

import timm.layers as timm_layers
import torch
import torch.nn.functional as F
from torch import nn

from ..layers.vit_tensors import rope_periods
from .vit_layers import SeparateQKVAttention, layer_scale

__all__ = [
    "NORMALIZE_COORDS",
    "RopeAttention",
    "RopeBlock",
    "RopePositionEmbedding",
    "SwiGLUFFN",
    "apply_rope",
]

NORMALIZE_COORDS = ("separate", "min", "max")


def apply_rope(x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
    """Rotate the last ``sin.shape[-2]`` tokens of ``x`` (B, heads, N, d); prefix tokens pass.

    ``sin``/``cos`` are (N_patch, d) or (B, 1, N_patch, d); the rotation runs in their dtype
    (float32) and the result is cast back to ``x``'s, as the official ``SelfAttention.apply_rope``.
    """
    patches = sin.shape[-2]
    prefix = x.shape[-2] - patches
    head, tail = x[..., :prefix, :], x[..., prefix:, :].to(sin.dtype)
    first, second = tail.chunk(2, dim=-1)
    rotated = tail * cos + torch.cat([-second, first], dim=-1) * sin
    return torch.cat([head, rotated.to(x.dtype)], dim=-2)


class RopePositionEmbedding(nn.Module):
    """DINOv3's 2-D RoPE: ``(sin, cos)`` of shape (H * W, head_dim) for a patch grid.

    Patch centres ``(i + 0.5) / H`` (and ``/ W``) are mapped to [-1, 1] (``normalize_coords``
    "separate"; "min"/"max" divide both axes by the smaller/larger side), angles are
    ``2 pi coord / period`` for the y then the x coordinate, and the half-dimension is tiled twice
    (the rotate-half layout). ``shift``, ``jitter`` and ``rescale`` are DINOv3's training-time
    coordinate augmentations (uniform shift, log-uniform per-axis and global scaling); they apply
    only in training mode and default to off, so evaluation is always the plain grid. The periods
    are a non-persistent float32 buffer: released files store them in bfloat16, which the loader
    checks against these values instead of loading.
    """

    def __init__(
        self,
        head_dim: int,
        base: float | None = 100.0,
        min_period: float | None = None,
        max_period: float | None = None,
        normalize_coords: str = "separate",
        shift: float | None = None,
        jitter: float | None = None,
        rescale: float | None = None,
    ) -> None:
        super().__init__()
        if normalize_coords not in NORMALIZE_COORDS:
            raise ValueError(
                f"normalize_coords must be one of {NORMALIZE_COORDS}, got {normalize_coords!r}"
            )
        self.head_dim = int(head_dim)
        self.base, self.min_period, self.max_period = base, min_period, max_period
        self.normalize_coords = normalize_coords
        self.shift, self.jitter, self.rescale = shift, jitter, rescale
        self.register_buffer(
            "periods", rope_periods(head_dim, base, min_period, max_period), persistent=False
        )

    def coords(self, grid: tuple[int, int], device: torch.device | None = None) -> torch.Tensor:
        """Normalised patch-centre coordinates (H * W, 2), rows (y, x), row-major."""
        h, w = grid
        if self.normalize_coords == "separate":
            den_h, den_w = h, w
        else:
            den_h = den_w = min(h, w) if self.normalize_coords == "min" else max(h, w)
        ys = torch.arange(0.5, h, device=device, dtype=torch.float32) / den_h
        xs = torch.arange(0.5, w, device=device, dtype=torch.float32) / den_w
        coords = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1).flatten(0, 1)
        return 2.0 * coords - 1.0

    def _augment(self, coords: torch.Tensor) -> torch.Tensor:
        if self.shift is not None:
            coords = coords + torch.empty(1, 2, device=coords.device).uniform_(
                -self.shift, self.shift)
        if self.jitter is not None:
            span = math.log(self.jitter)
            coords = coords * torch.empty(1, 2, device=coords.device).uniform_(-span, span).exp()
        if self.rescale is not None:
            span = math.log(self.rescale)
            coords = coords * torch.empty(1, device=coords.device).uniform_(-span, span).exp()
        return coords

    def from_coords(self, coords: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(sin, cos)`` (..., head_dim) of coordinates (..., 2) in [-1, 1] units."""
        periods = self.periods.to(coords.device)
        angles = 2 * math.pi * coords[..., None].float() / periods
        angles = angles.flatten(-2)  # (..., head_dim / 2): y angles then x angles
        angles = torch.cat([angles, angles], dim=-1)
        return angles.sin(), angles.cos()

    def forward(
        self, grid: tuple[int, int], device: torch.device | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        coords = self.coords(grid, device)
        if self.training:
            coords = self._augment(coords)
        return self.from_coords(coords)


class RopeAttention(SeparateQKVAttention):
    """Multi-head self-attention with separate q/k/v linears and RoPE on the patch tokens' q, k.

    ``qkv_bias`` gives q and v a bias; ``key_bias`` gives k one. The official DINOv3 stores a
    fused ``qkv`` whose k bias is masked to zero (``LinearKMaskedBias``), HF sets
    ``key_bias=False``: a k bias would not cancel in the softmax once k is rotated.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        key_bias: bool = False,
        proj_bias: bool = True,
        attn_drop: float = 0.0,
    ) -> None:
        super().__init__(dim, num_heads, qkv_bias, key_bias, proj_bias, attn_drop)

    def forward(
        self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> torch.Tensor:
        q, k, v = self.split_heads(x)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        return self.attend(q, k, v)


class SwiGLUFFN(nn.Module):
    """DINOv3's SwiGLU FFN with the official names: ``w3(silu(w1(x)) * w2(x))``.

    Three separate linears (HF: gate_proj, up_proj, down_proj; timm: fc1_g, fc1_x, fc2), so each
    gets its own SoMA adapter; SoMA targets them as ``w1``, ``w2``, ``w3``.
    """

    def __init__(self, dim: int, hidden: int, bias: bool = True) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=bias)
        self.w2 = nn.Linear(dim, hidden, bias=bias)
        self.w3 = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w3(F.silu(self.w1(x)) * self.w2(x))


class RopeBlock(nn.Module):
    """Pre-norm DINOv3 block (LayerNorm eps 1e-5, layer-scale ``ls1``/``ls2``) taking the RoPE."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        ffn_hidden: int,
        ffn_layer: str = "mlp",
        qkv_bias: bool = True,
        key_bias: bool = False,
        layer_scale_init: float | None = 1e-5,
        drop_path: float = 0.0,
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = RopeAttention(dim, num_heads, qkv_bias=qkv_bias, key_bias=key_bias)
        self.ls1 = layer_scale(dim, layer_scale_init)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        if ffn_layer == "mlp":
            self.mlp: nn.Module = timm_layers.Mlp(dim, ffn_hidden, act_layer=nn.GELU)
        elif ffn_layer == "swiglu":
            self.mlp = SwiGLUFFN(dim, ffn_hidden)
        else:
            raise ValueError(f"ffn_layer must be 'mlp' or 'swiglu', got {ffn_layer!r}")
        self.ls2 = layer_scale(dim, layer_scale_init)
        self.drop_path = timm_layers.DropPath(drop_path)

    def forward(
        self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> torch.Tensor:
        x = x + self.drop_path(self.ls1(self.attn(self.norm1(x), rope)))
        return x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))
