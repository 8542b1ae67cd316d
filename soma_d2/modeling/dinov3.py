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
import torch.nn.functional as F
from torch import nn

from ..layers.vit_tensors import dinov3_swiglu_hidden
from .checkpointing import checkpoint_call, checkpointed_range, resolve_checkpoint_count
from .dinov3_layers import RopeBlock, RopePositionEmbedding
from .token_maps import PatchTokenMaps

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
        if ffn_layer not in ("mlp", "swiglu"):
            raise ValueError(f"ffn_layer must be 'mlp' or 'swiglu', got {ffn_layer!r}")
        if not 0 <= frozen_blocks <= depth:
            raise ValueError(f"frozen_blocks must be in [0, {depth}], got {frozen_blocks}")
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.patch_size = int(patch_size)
        self.embed_dim = int(embed_dim)
        self.depth = int(depth)
        self.num_heads = int(num_heads)
        self.num_register_tokens = int(num_register_tokens)
        self.num_prefix_tokens = 1 + self.num_register_tokens
        self.frozen_blocks = int(frozen_blocks)
        trainable = self.depth - self.frozen_blocks
        if use_act_checkpoint and checkpoint_blocks not in (0, -1, trainable):
            raise ValueError(f"use_act_checkpoint=True checkpoints all {trainable} trainable "
                             f"blocks; it contradicts checkpoint_blocks={checkpoint_blocks}")
        self.set_checkpoint_blocks(-1 if use_act_checkpoint else checkpoint_blocks)
        self.out_indices = self._normalise_out_indices(out_indices)

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

        if ffn_hidden_dim is not None:
            hidden = int(ffn_hidden_dim)
        elif ffn_layer == "swiglu":
            hidden = dinov3_swiglu_hidden(embed_dim, mlp_ratio)
        else:
            hidden = int(embed_dim * mlp_ratio)
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
        nn.init.normal_(self.cls_token, std=0.02)
        if self.register_tokens is not None:
            nn.init.normal_(self.register_tokens, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def embed_patches(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Patch tokens (B, H*W, D) of a padded image batch and their grid (H, W)."""
        if x.ndim != 4:
            raise ValueError(f"expected an image batch (B, C, H, W), got shape {tuple(x.shape)}")
        pad_h = -x.shape[-2] % self.patch_size
        pad_w = -x.shape[-1] % self.patch_size
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        x = self.patch_embed(x)
        grid = (int(x.shape[-2]), int(x.shape[-1]))
        return x.flatten(2).transpose(1, 2), grid

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
        if masks is not None:
            x = torch.where(masks.unsqueeze(-1), self.mask_token.to(x.dtype).unsqueeze(0), x)
        return self.with_prefix(x), grid

    def set_checkpoint_blocks(self, count: int) -> None:
        """Checkpoint the first `count` trainable blocks from now on (-1: all, 0: none)."""
        self.checkpoint_blocks = resolve_checkpoint_count(
            count, self.depth - self.frozen_blocks, "checkpoint_blocks")
        self._checkpointed = checkpointed_range(self.frozen_blocks, self.checkpoint_blocks)

    def _run_block(self, index: int, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]
                   ) -> torch.Tensor:
        return checkpoint_call(self.blocks[index], x, rope, enabled=index in self._checkpointed)

    def _encode(
        self, x: torch.Tensor, masks: torch.Tensor | None, last: int, keep: Sequence[int] = ()
    ) -> tuple[torch.Tensor, dict[int, torch.Tensor], tuple[int, int]]:
        """Run embeddings and blocks ``0..last``; return the last output and those in ``keep``."""
        kept: dict[int, torch.Tensor] = {}
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.frozen_blocks == 0):
            x, grid = self.prepare_tokens(x, masks)
        rope = self.rope_embed(grid, device=x.device)
        for index in range(last + 1):
            if index < self.frozen_blocks:
                with torch.no_grad():
                    x = self.blocks[index](x, rope)
            else:
                x = self._run_block(index, x, rope)
            if index in keep:
                kept[index] = x
        return x, kept, grid

    def forward_features(
        self, x: torch.Tensor, masks: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Final-norm tokens ``[cls, registers..., patches...]``, shape (B, 1 + R + N, D)."""
        x, _, _ = self._encode(x, masks, self.depth - 1)
        return self.norm(x)


def build_dinov3_vit(arch: str, **overrides) -> DinoV3VisionTransformer:
    """Build a DINOv3 ViT from a ``DINOV3_ARCHS`` name; keyword overrides win over the table."""
    if arch not in DINOV3_ARCHS:
        raise ValueError(f"unknown DINOv3 arch {arch!r}; known: {sorted(DINOV3_ARCHS)}")
    return DinoV3VisionTransformer(**{**DINOV3_ARCHS[arch], **overrides})
