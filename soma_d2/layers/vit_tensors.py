"""ViT tensor helpers shared by the DINOv2/DINOv3 ViTs and their weight loaders: sizes,
resampling, FFN widths, RoPE periods.

Pure torch on purpose (timm only lazily, for FlexiViT resampling): ``soma_d2.modeling`` (the ViTs)
and ``soma_d2.checkpoint`` (the loaders, which must not import the model package) both use them.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "dinov3_swiglu_hidden",
    "ffn_hidden_width",
    "interpolate_pos_embed",
    "resample_patch_embed",
    "rope_periods",
    "swiglu_hidden_features",
    "to_2tuple",
]


def to_2tuple(value: int | Sequence[int], name: str = "size") -> tuple[int, int]:
    """Normalise an int or (h, w) pair, so square and rectangular sizes share one code path."""
    if isinstance(value, int):
        return value, value
    pair = tuple(int(v) for v in value)
    if len(pair) != 2:
        raise ValueError(f"{name} must be an int or a (height, width) pair, got {value!r}")
    return pair  # type: ignore[return-value]


def swiglu_hidden_features(embed_dim: int, mlp_ratio: float) -> int:
    """Hidden width of DINOv2's SwiGLU FFN: two thirds of the MLP width, rounded up to 8.

    This is the rule of DINOv2's ``SwiGLUFFNFused`` (and of HF's ``Dinov2SwiGLUFFN``); it gives
    4096 for ViT-g (1536 * 4 -> 4096), so checkpoints load without a special case.
    """
    hidden = int(embed_dim * mlp_ratio)
    return (int(hidden * 2 / 3) + 7) // 8 * 8


def ffn_hidden_width(ffn_hidden_dim: int | None, ffn_layer: str, embed_dim: int,
                     mlp_ratio: float, swiglu_rule: Callable[[int, float], int]) -> int:
    """A ViT's FFN width: ``ffn_hidden_dim`` if given (checkpoints no ratio reproduces), else the
    family's ``swiglu_rule`` for a SwiGLU FFN, else ``embed_dim * mlp_ratio``."""
    if ffn_hidden_dim is not None:
        return int(ffn_hidden_dim)
    if ffn_layer == "swiglu":
        return swiglu_rule(embed_dim, mlp_ratio)
    return int(embed_dim * mlp_ratio)


def dinov3_swiglu_hidden(embed_dim: int, mlp_ratio: float, align_to: int = 8) -> int:
    """Hidden width of the official DINOv3 ``SwiGLUFFN``: two thirds of ``embed_dim * ratio``,
    rounded up to ``align_to`` (S+: 384 * 6 -> 1536; H+: 1280 * 6 -> 5120)."""
    hidden = int(int(embed_dim * mlp_ratio) * 2 / 3)
    return hidden + (-hidden % align_to)


def rope_periods(
    head_dim: int,
    base: float | None = 100.0,
    min_period: float | None = None,
    max_period: float | None = None,
) -> torch.Tensor:
    """The ``head_dim / 4`` RoPE periods of DINOv3 (float32): ``base ** (2i / (head_dim / 2))``,
    or a geometric ramp from ``min_period`` to ``max_period`` when both are given."""
    if head_dim % 4:
        raise ValueError(f"DINOv3 RoPE needs a head dimension divisible by 4, got {head_dim}")
    count = head_dim // 4
    if min_period is not None and max_period is not None:
        ramp = torch.linspace(0, 1, count, dtype=torch.float32)
        return min_period * (max_period / min_period) ** ramp
    if base is None:
        raise ValueError("DINOv3 RoPE needs either a base or both min_period and max_period")
    return float(base) ** (2 * torch.arange(count, dtype=torch.float32) / (head_dim // 2))


def interpolate_pos_embed(
    pos_embed: torch.Tensor,
    new_grid: int | Sequence[int],
    num_prefix_tokens: int = 1,
    old_grid: int | Sequence[int] | None = None,
    interpolate_offset: float = 0.0,
    antialias: bool = False,
) -> torch.Tensor:
    """Bicubically resample the patch part of a (1, prefix + Gh*Gw, D) position embedding.

    ``interpolate_offset=0`` resamples to an explicit output size (HF, timm, the SoMA converter);
    ``interpolate_offset>0`` reproduces DINOv2's historical kludge of passing the scale factor
    ``(G_new + offset) / G_old`` to ``F.interpolate``, which shifts the sampling grid slightly.
    timm resamples with ``antialias=True`` (PIL-style cubic, a=-0.5); DINOv2 ViT-S/B/L/g default to
    offset 0.1 without antialias, their register variants to offset 0 with antialias. Prefix
    tokens (class token) are kept unchanged. Computed in float32, returned in the input dtype.
    """
    if pos_embed.ndim != 3 or pos_embed.shape[0] != 1:
        raise ValueError(f"pos_embed must have shape (1, tokens, dim), got {tuple(pos_embed.shape)}")
    new_h, new_w = to_2tuple(new_grid, "new_grid")
    num_patches = pos_embed.shape[1] - num_prefix_tokens
    if old_grid is None:
        side = math.isqrt(num_patches)
        if side * side != num_patches:
            raise ValueError(
                f"pos_embed has {num_patches} patch positions, not a square grid; pass old_grid"
            )
        old_h, old_w = side, side
    else:
        old_h, old_w = to_2tuple(old_grid, "old_grid")
        if old_h * old_w != num_patches:
            raise ValueError(
                f"old_grid {(old_h, old_w)} does not match the {num_patches} patch positions "
                "of pos_embed"
            )
    if (old_h, old_w) == (new_h, new_w):
        return pos_embed
    prefix, patches = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    dim = pos_embed.shape[-1]
    grid = patches.float().reshape(1, old_h, old_w, dim).permute(0, 3, 1, 2)
    if interpolate_offset:
        scale = ((new_h + interpolate_offset) / old_h, (new_w + interpolate_offset) / old_w)
        grid = F.interpolate(grid, scale_factor=scale, mode="bicubic", antialias=antialias)
    else:
        grid = F.interpolate(
            grid, size=(new_h, new_w), mode="bicubic", align_corners=False, antialias=antialias
        )
    if tuple(grid.shape[-2:]) != (new_h, new_w):
        raise RuntimeError(
            f"pos_embed interpolation produced grid {tuple(grid.shape[-2:])}, "
            f"expected {(new_h, new_w)}"
        )
    patches = grid.permute(0, 2, 3, 1).reshape(1, new_h * new_w, dim).to(pos_embed.dtype)
    return torch.cat([prefix, patches], dim=1)


def resample_patch_embed(
    weight: torch.Tensor, new_size: int | Sequence[int], mode: str = "bicubic"
) -> torch.Tensor:
    """Resample a (D, C, kh, kw) patch-embedding kernel to ``new_size``.

    ``mode="bicubic"`` is the official SoMA/Rein recipe: plain ``F.interpolate`` of the kernel.
    It keeps the kernel's mean, so the response to a constant image grows by the area ratio
    ((16/14)^2 ~= 1.31 for 14 -> 16); fine-tuning absorbs that. ``mode="flexi"`` is FlexiViT's
    pseudo-inverse resampling (timm's ``resample_patch_embed``): the new kernel applied to a
    bicubically resized patch reproduces the old response, including for constant images.
    """
    if weight.ndim != 4:
        raise ValueError(f"patch kernel must be 4-D (D, C, kh, kw), got {tuple(weight.shape)}")
    new_hw = to_2tuple(new_size, "new_size")
    old_hw = (int(weight.shape[-2]), int(weight.shape[-1]))
    if old_hw == new_hw:
        return weight
    if mode == "bicubic":
        out = F.interpolate(weight.float(), size=new_hw, mode="bicubic", align_corners=False)
    elif mode == "flexi":
        from timm.layers import resample_patch_embed as flexi_resample  # lazy: only this mode

        out = flexi_resample(weight.float(), list(new_hw))
    else:
        raise ValueError(f"resample mode must be 'bicubic' or 'flexi', got {mode!r}")
    return out.to(weight.dtype)
