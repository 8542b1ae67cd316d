"""DINOv2 Vision Transformer with separate q/k/v linears, as the SoMA backbone.

Numerically the model is DINOv2's ``DinoVisionTransformer`` (and timm's / HF's ports of it); its
module names form the layout that ``soma_d2.checkpoint.load_dinov2_weights`` produces, with the fused
``qkv`` split so that the SoMA core can give q, k and v their own SVD adapters. The position
embedding is resampled on the fly for any input size; inputs whose sides are not multiples of the
patch size are zero-padded at the bottom/right, so a side of S pixels gives ceil(S / patch) tokens,
the same rounding as Detectron2's stride-s feature maps of padded images.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import timm.layers as timm_layers
import torch
from torch import nn

from ..layers.vit_tensors import (
    ffn_hidden_width,
    interpolate_pos_embed,
    swiglu_hidden_features,
    to_2tuple,
)
from .token_maps import PatchTokenMaps, check_vit_args, init_linears
from .vit_layers import Block

__all__ = [
    "VIT_ARCHS",
    "DinoVisionTransformer",
    "build_dinov2_vit",
]

VIT_ARCHS: dict[str, dict] = {
    "vit_s": dict(embed_dim=384, depth=12, num_heads=6),
    "vit_b": dict(embed_dim=768, depth=12, num_heads=12),
    "vit_l": dict(embed_dim=1024, depth=24, num_heads=16),
    "vit_g": dict(embed_dim=1536, depth=40, num_heads=24, ffn_layer="swiglu", mlp_ratio=4.0),
}


class DinoVisionTransformer(PatchTokenMaps, nn.Module):
    """DINOv2 ViT returning normalised per-block feature maps for Detectron2 necks.

    ``img_size`` fixes the grid of the stored position embedding (518 / 14 = 37 for the released
    weights, or the training grid after conversion); any other input size is served by bicubic
    resampling with DINOv2's ``interpolate_offset`` / ``interpolate_antialias`` conventions.
    Blocks ``0 .. frozen_blocks-1`` (and the embeddings before them) run under ``torch.no_grad``,
    which saves their activations' memory; gradients flow normally from block ``frozen_blocks`` on.
    ``checkpoint_blocks`` trainable blocks from block ``frozen_blocks`` on (-1: all of them;
    ``use_act_checkpoint=True`` is the same as -1) recompute their activations in the backward
    pass instead of storing them (``soma_d2.modeling.checkpointing``); outputs and gradients are
    unchanged, and evaluation or ``torch.no_grad`` runs them plainly.
    ``ffn_hidden_dim`` overrides the FFN width derived from ``mlp_ratio`` (for checkpoints whose
    width no ratio reproduces).
    """

    def __init__(
        self,
        img_size: int | Sequence[int] = 518,
        patch_size: int = 14,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        ffn_layer: str = "mlp",
        layer_scale_init: float | None = 1e-5,
        num_register_tokens: int = 0,
        drop_path_rate: float = 0.0,
        out_indices: Sequence[int] | None = None,
        frozen_blocks: int = 0,
        use_act_checkpoint: bool = False,
        checkpoint_blocks: int = 0,
        interpolate_offset: float = 0.1,
        interpolate_antialias: bool = False,
        in_chans: int = 3,
        ffn_hidden_dim: int | None = None,
    ) -> None:
        super().__init__()
        check_vit_args(ffn_layer, frozen_blocks, depth)
        img_h, img_w = to_2tuple(img_size, "img_size")
        self.use_act_checkpoint = bool(use_act_checkpoint)
        self._init_layout(patch_size, embed_dim, depth, num_heads, num_register_tokens,
                          frozen_blocks, out_indices, self.use_act_checkpoint, checkpoint_blocks)
        self.pos_grid = (math.ceil(img_h / patch_size), math.ceil(img_w / patch_size))
        self.interpolate_offset = float(interpolate_offset)
        self.interpolate_antialias = bool(interpolate_antialias)

        # plain Conv2d projection (kernel = stride = patch); forward pads inputs itself
        self.patch_embed = timm_layers.PatchEmbed(
            img_size=None, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim,
            flatten=False, strict_img_size=False)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        num_positions = 1 + self.pos_grid[0] * self.pos_grid[1]
        self.pos_embed = nn.Parameter(torch.zeros(1, num_positions, embed_dim))
        if self.num_register_tokens:
            self.register_tokens = nn.Parameter(
                torch.zeros(1, self.num_register_tokens, embed_dim)
            )
        else:
            self.register_tokens = None
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))

        hidden = ffn_hidden_width(ffn_hidden_dim, ffn_layer, embed_dim, mlp_ratio,
                                  swiglu_hidden_features)
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList(
            Block(
                embed_dim,
                num_heads,
                hidden,
                ffn_layer=ffn_layer,
                qkv_bias=qkv_bias,
                layer_scale_init=layer_scale_init,
                drop_path=rate,
            )
            for rate in rates
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        if self.register_tokens is not None:
            nn.init.normal_(self.register_tokens, std=1e-6)
        init_linears(self)

    def _pos_embed_for(self, grid: tuple[int, int]) -> torch.Tensor:
        if grid == self.pos_grid:
            return self.pos_embed
        return interpolate_pos_embed(
            self.pos_embed,
            grid,
            num_prefix_tokens=1,
            old_grid=self.pos_grid,
            interpolate_offset=self.interpolate_offset,
            antialias=self.interpolate_antialias,
        )

    def prepare_tokens(
        self, x: torch.Tensor, masks: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, tuple[int, int]]:
        """Embed an image batch into ``[cls, registers..., patches...]`` tokens and its grid."""
        x, grid = self.embed_patches(x)
        x = self._apply_mask(x, masks)
        pos = self._pos_embed_for(grid)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + pos
        if self.register_tokens is not None:
            registers = self.register_tokens.expand(x.shape[0], -1, -1)
            x = torch.cat([x[:, :1], registers, x[:, 1:]], dim=1)
        return x, grid


def build_dinov2_vit(arch: str, **overrides) -> DinoVisionTransformer:
    """Build a ViT from a ``VIT_ARCHS`` name; keyword overrides win over the table."""
    if arch not in VIT_ARCHS:
        raise ValueError(f"unknown DINOv2 arch {arch!r}; known: {sorted(VIT_ARCHS)}")
    return DinoVisionTransformer(**{**VIT_ARCHS[arch], **overrides})
