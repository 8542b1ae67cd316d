"""DINOv3 Vision Transformer with separate q/k/v linears, the second SoMA backbone family.

Numerically the model is the official DINOv3 ``DinoVisionTransformer`` (and timm's
``vit_*_patch16_dinov3`` / HF's ``DINOv3ViTModel`` ports): patch 16, ``[cls, 4 storage
tokens, patches]``, 2-D RoPE on the patch tokens' queries and keys instead of a position
embedding, layer-scale, an MLP (S, B, L) or SwiGLU (S+, H+) FFN and LayerNorm eps 1e-5. Its
module names form the layout that ``soma_d2.checkpoint.dinov3.load_dinov3_weights`` produces, with
the fused ``qkv`` split. It exposes what the soma-d2 backbones read from the DINOv2 ViT
(``_encode``, ``out_indices``, ``num_prefix_tokens``, ``patch_size``, ``embed_dim``,
``register_tokens``), so the ViTDet pyramid, the Co-DINO and the Mask2Former raw-tap backbones run
on it unchanged. The RoPE is computed for each input's grid, so any input size is exact; inputs
whose sides are not multiples of the patch size are zero-padded at the bottom/right.
"""
from __future__ import annotations

from collections.abc import Sequence

import timm.layers as timm_layers
import torch
from torch import nn

from ..layers.vit_tensors import dinov3_swiglu_hidden, ffn_hidden_width
from .dinov3_layers import RopeBlock, RopePositionEmbedding
from .token_maps import PatchTokenMaps, check_vit_args, init_linears

__all__ = ["DINOV3_ARCHS", "DinoV3VisionTransformer", "build_dinov3_vit"]

# Official DINOv3 sizes (hub ``dinov3_vit*16``); head dim 64 throughout, 4 storage tokens,
# RoPE base 100. S+ and H+ use SwiGLU at ratio 6 (hidden 1536 / 5120).
DINOV3_ARCHS: dict[str, dict] = {
    "vit_s": dict(embed_dim=384, depth=12, num_heads=6),
    "vit_s_plus": dict(embed_dim=384, depth=12, num_heads=6, ffn_layer="swiglu", mlp_ratio=6.0),
    "vit_b": dict(embed_dim=768, depth=12, num_heads=12),
    "vit_l": dict(embed_dim=1024, depth=24, num_heads=16),
    "vit_h_plus": dict(embed_dim=1280, depth=32, num_heads=20, ffn_layer="swiglu", mlp_ratio=6.0),
}


class DinoV3VisionTransformer(PatchTokenMaps, nn.Module):
    """DINOv3 ViT returning normalised per-block feature maps for Detectron2 necks.

    There is no position table, hence no ``img_size``: the RoPE (``rope_base``, or
    ``rope_min_period``/``rope_max_period``; ``rope_normalize_coords``) is computed per input
    grid. ``rope_shift``/``rope_jitter``/``rope_rescale`` are DINOv3's training-time coordinate
    augmentations (off by default; never active in eval mode). Blocks ``0 .. frozen_blocks-1``
    (and the embeddings) run under ``torch.no_grad``. ``ffn_hidden_dim`` overrides the FFN width
    derived from ``mlp_ratio``.
    """

    def __init__(
        self,
        patch_size: int = 16,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        key_bias: bool = False,
        ffn_layer: str = "mlp",
        layer_scale_init: float | None = 1e-5,
        num_register_tokens: int = 4,
        drop_path_rate: float = 0.0,
        out_indices: Sequence[int] | None = None,
        frozen_blocks: int = 0,
        use_act_checkpoint: bool = False,
        checkpoint_blocks: int = 0,
        in_chans: int = 3,
        ffn_hidden_dim: int | None = None,
        norm_eps: float = 1e-5,
        rope_base: float | None = 100.0,
        rope_min_period: float | None = None,
        rope_max_period: float | None = None,
        rope_normalize_coords: str = "separate",
        rope_shift: float | None = None,
        rope_jitter: float | None = None,
        rope_rescale: float | None = None,
    ) -> None:
        super().__init__()
        check_vit_args(ffn_layer, frozen_blocks, depth)
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self._init_layout(patch_size, embed_dim, depth, num_heads, num_register_tokens,
                          frozen_blocks, out_indices, use_act_checkpoint, checkpoint_blocks)

        self.patch_embed = timm_layers.PatchEmbed(
            img_size=None, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim,
            flatten=False, strict_img_size=False)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        if self.num_register_tokens:
            self.register_tokens = nn.Parameter(
                torch.zeros(1, self.num_register_tokens, embed_dim)
            )
        else:
            self.register_tokens = None
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))
        self.rope_embed = RopePositionEmbedding(
            embed_dim // num_heads, base=rope_base, min_period=rope_min_period,
            max_period=rope_max_period, normalize_coords=rope_normalize_coords,
            shift=rope_shift, jitter=rope_jitter, rescale=rope_rescale)

        hidden = ffn_hidden_width(ffn_hidden_dim, ffn_layer, embed_dim, mlp_ratio,
                                  dinov3_swiglu_hidden)
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList(
            RopeBlock(
                embed_dim, num_heads, hidden, ffn_layer=ffn_layer, qkv_bias=qkv_bias,
                key_bias=key_bias, layer_scale_init=layer_scale_init, drop_path=rate,
                norm_eps=norm_eps,
            )
            for rate in rates
        )
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.normal_(self.cls_token, std=0.02)
        if self.register_tokens is not None:
            nn.init.normal_(self.register_tokens, std=0.02)
        init_linears(self)

    def with_prefix(self, patches: torch.Tensor) -> torch.Tensor:
        """``[cls, registers..., patches...]`` (the official token order)."""
        batch = patches.shape[0]
        parts = [self.cls_token.expand(batch, -1, -1)]
        if self.register_tokens is not None:
            parts.append(self.register_tokens.expand(batch, -1, -1))
        return torch.cat([*parts, patches], dim=1)

    def prepare_tokens(
        self, x: torch.Tensor, masks: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, tuple[int, int]]:
        """Embed an image batch into ``[cls, registers..., patches...]`` tokens and its grid."""
        x, grid = self.embed_patches(x)
        return self.with_prefix(self._apply_mask(x, masks)), grid

    def _block_inputs(self, x: torch.Tensor, grid: tuple[int, int]
                      ) -> tuple[tuple[torch.Tensor, torch.Tensor]]:
        """The RoPE (sin, cos) tables of this input's grid, which every block takes."""
        return (self.rope_embed(grid, device=x.device),)


def build_dinov3_vit(arch: str, **overrides) -> DinoV3VisionTransformer:
    """Build a DINOv3 ViT from a ``DINOV3_ARCHS`` name; keyword overrides win over the table."""
    if arch not in DINOV3_ARCHS:
        raise ValueError(f"unknown DINOv3 arch {arch!r}; known: {sorted(DINOV3_ARCHS)}")
    return DinoV3VisionTransformer(**{**DINOV3_ARCHS[arch], **overrides})
