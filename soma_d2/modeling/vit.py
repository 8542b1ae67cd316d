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
import torch.nn.functional as F
from torch import nn

from ..layers.vit_tensors import interpolate_pos_embed, swiglu_hidden_features, to_2tuple
from .checkpointing import checkpoint_call, checkpointed_range, resolve_checkpoint_count
from .token_maps import PatchTokenMaps
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
        if ffn_layer not in ("mlp", "swiglu"):
            raise ValueError(f"ffn_layer must be 'mlp' or 'swiglu', got {ffn_layer!r}")
        if not 0 <= frozen_blocks <= depth:
            raise ValueError(f"frozen_blocks must be in [0, {depth}], got {frozen_blocks}")
        img_h, img_w = to_2tuple(img_size, "img_size")
        self.patch_size = int(patch_size)
        self.embed_dim = int(embed_dim)
        self.depth = int(depth)
        self.num_heads = int(num_heads)
        self.num_register_tokens = int(num_register_tokens)
        self.num_prefix_tokens = 1 + self.num_register_tokens
        self.pos_grid = (math.ceil(img_h / patch_size), math.ceil(img_w / patch_size))
        self.frozen_blocks = int(frozen_blocks)
        self.use_act_checkpoint = bool(use_act_checkpoint)
        trainable = depth - self.frozen_blocks
        if self.use_act_checkpoint and checkpoint_blocks not in (0, -1, trainable):
            raise ValueError(f"use_act_checkpoint=True checkpoints all {trainable} trainable "
                             f"blocks; it contradicts checkpoint_blocks={checkpoint_blocks}")
        self.set_checkpoint_blocks(-1 if self.use_act_checkpoint else checkpoint_blocks)
        self.interpolate_offset = float(interpolate_offset)
        self.interpolate_antialias = bool(interpolate_antialias)
        self.out_indices = self._normalise_out_indices(out_indices)

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

        if ffn_hidden_dim is not None:
            hidden = int(ffn_hidden_dim)
        elif ffn_layer == "swiglu":
            hidden = swiglu_hidden_features(embed_dim, mlp_ratio)
        else:
            hidden = int(embed_dim * mlp_ratio)
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

    def _normalise_out_indices(self, out_indices: Sequence[int] | None) -> tuple[int, ...]:
        if out_indices is None:
            return (self.depth - 1,)
        result = []
        for index in out_indices:
            resolved = index + self.depth if index < 0 else index
            if not 0 <= resolved < self.depth:
                raise ValueError(
                    f"out_indices entry {index} is outside the {self.depth} blocks of this ViT"
                )
            result.append(int(resolved))
        if not result:
            raise ValueError("out_indices must name at least one block")
        return tuple(sorted(set(result)))

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        if self.register_tokens is not None:
            nn.init.normal_(self.register_tokens, std=1e-6)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

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
        if x.ndim != 4:
            raise ValueError(f"expected an image batch (B, C, H, W), got shape {tuple(x.shape)}")
        pad_h = -x.shape[-2] % self.patch_size
        pad_w = -x.shape[-1] % self.patch_size
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        x = self.patch_embed(x)
        grid = (int(x.shape[-2]), int(x.shape[-1]))
        x = x.flatten(2).transpose(1, 2)
        if masks is not None:
            x = torch.where(masks.unsqueeze(-1), self.mask_token.to(x.dtype).unsqueeze(0), x)
        pos = self._pos_embed_for(grid)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + pos
        if self.register_tokens is not None:
            registers = self.register_tokens.expand(x.shape[0], -1, -1)
            x = torch.cat([x[:, :1], registers, x[:, 1:]], dim=1)
        return x, grid

    def set_checkpoint_blocks(self, count: int) -> None:
        """Checkpoint the first `count` trainable blocks from now on (-1: all, 0: none)."""
        self.checkpoint_blocks = resolve_checkpoint_count(
            count, self.depth - self.frozen_blocks, "checkpoint_blocks")
        self._checkpointed = checkpointed_range(self.frozen_blocks, self.checkpoint_blocks)

    def _run_block(self, index: int, x: torch.Tensor) -> torch.Tensor:
        return checkpoint_call(self.blocks[index], x, enabled=index in self._checkpointed)

    def _encode(
        self, x: torch.Tensor, masks: torch.Tensor | None, last: int, keep: Sequence[int] = ()
    ) -> tuple[torch.Tensor, dict[int, torch.Tensor], tuple[int, int]]:
        """Run embeddings and blocks ``0..last``; return the last output and those in ``keep``."""
        kept: dict[int, torch.Tensor] = {}
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.frozen_blocks == 0):
            x, grid = self.prepare_tokens(x, masks)
        for index in range(last + 1):
            if index < self.frozen_blocks:
                with torch.no_grad():
                    x = self.blocks[index](x)
            else:
                x = self._run_block(index, x)
            if index in keep:
                kept[index] = x
        return x, kept, grid

    def forward_features(
        self, x: torch.Tensor, masks: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Final-norm tokens ``[cls, registers..., patches...]``, shape (B, 1 + R + N, D)."""
        x, _, _ = self._encode(x, masks, self.depth - 1)
        return self.norm(x)


def build_dinov2_vit(arch: str, **overrides) -> DinoVisionTransformer:
    """Build a ViT from a ``VIT_ARCHS`` name; keyword overrides win over the table."""
    if arch not in VIT_ARCHS:
        raise ValueError(f"unknown DINOv2 arch {arch!r}; known: {sorted(VIT_ARCHS)}")
    return DinoVisionTransformer(**{**VIT_ARCHS[arch], **overrides})
