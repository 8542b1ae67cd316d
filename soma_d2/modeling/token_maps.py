"""What the DINOv2 and DINOv3 ViTs share: the block loop, tap maps and the backbone ``forward``.

Both ViT families expose the same encoder contract (``_encode(x, masks, last, keep)`` returning the
kept block outputs and the patch grid, ``out_indices``, ``num_prefix_tokens``, ``embed_dim`` and a
final ``norm``), so that loop, the checkpoint selection, the patch embedding of padded inputs and
the tap loop that turns kept tokens into ``(B, D, h, w)`` maps live once here: the raw-tap heads
(``norm=False``) and the ViTDet pyramid (``norm=True``) then work on either family. Each family
keeps its own ``__init__``, weight init and ``prepare_tokens`` (position embedding vs RoPE); a
family whose blocks take more than the tokens (the RoPE tables) returns them from
``_block_inputs``.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .checkpointing import checkpoint_call, checkpointed_range, resolve_checkpoint_count


def check_vit_args(ffn_layer: str, frozen_blocks: int, depth: int) -> None:
    """Reject an unknown FFN kind or a ``frozen_blocks`` outside ``[0, depth]``."""
    if ffn_layer not in ("mlp", "swiglu"):
        raise ValueError(f"ffn_layer must be 'mlp' or 'swiglu', got {ffn_layer!r}")
    if not 0 <= frozen_blocks <= depth:
        raise ValueError(f"frozen_blocks must be in [0, {depth}], got {frozen_blocks}")


def init_linears(module: nn.Module) -> None:
    """Truncated-normal (std 0.02) weights and zero biases for every ``nn.Linear`` under it."""
    for sub in module.modules():
        if isinstance(sub, nn.Linear):
            nn.init.trunc_normal_(sub.weight, std=0.02)
            if sub.bias is not None:
                nn.init.zeros_(sub.bias)


class PatchTokenMaps:
    """Mixin for ViTs with the ``_encode`` contract above: block loop, tap maps and ``forward``."""

    def _init_layout(self, patch_size: int, embed_dim: int, depth: int, num_heads: int,
                     num_register_tokens: int, frozen_blocks: int,
                     out_indices: Sequence[int] | None,
                     use_act_checkpoint: bool, checkpoint_blocks: int) -> None:
        """Set the sizes, token counts, frozen/checkpointed blocks and ``out_indices``."""
        self.patch_size = int(patch_size)
        self.embed_dim = int(embed_dim)
        self.depth = int(depth)
        self.num_heads = int(num_heads)
        self.num_register_tokens = int(num_register_tokens)
        self.num_prefix_tokens = 1 + self.num_register_tokens
        self.frozen_blocks = int(frozen_blocks)
        self._init_checkpointing(use_act_checkpoint, checkpoint_blocks)
        self.out_indices = self._normalise_out_indices(out_indices)

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

    def _init_checkpointing(self, use_act_checkpoint: bool, checkpoint_blocks: int) -> None:
        """Apply ``use_act_checkpoint`` (all trainable blocks) or ``checkpoint_blocks``."""
        trainable = self.depth - self.frozen_blocks
        if use_act_checkpoint and checkpoint_blocks not in (0, -1, trainable):
            raise ValueError(f"use_act_checkpoint=True checkpoints all {trainable} trainable "
                             f"blocks; it contradicts checkpoint_blocks={checkpoint_blocks}")
        self.set_checkpoint_blocks(-1 if use_act_checkpoint else checkpoint_blocks)

    def set_checkpoint_blocks(self, count: int) -> None:
        """Checkpoint the first `count` trainable blocks from now on (-1: all, 0: none)."""
        self.checkpoint_blocks = resolve_checkpoint_count(
            count, self.depth - self.frozen_blocks, "checkpoint_blocks")
        self._checkpointed = checkpointed_range(self.frozen_blocks, self.checkpoint_blocks)

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

    def _apply_mask(self, x: torch.Tensor, masks: torch.Tensor | None) -> torch.Tensor:
        """Replace the masked patch tokens by ``mask_token`` (``masks``: (B, N) bool)."""
        if masks is None:
            return x
        return torch.where(masks.unsqueeze(-1), self.mask_token.to(x.dtype).unsqueeze(0), x)

    def _block_inputs(self, x: torch.Tensor, grid: tuple[int, int]) -> tuple:
        """Extra positional inputs every block takes after the tokens (none by default)."""
        return ()

    def _run_block(self, index: int, x: torch.Tensor, *extra: object) -> torch.Tensor:
        return checkpoint_call(self.blocks[index], x, *extra,
                               enabled=index in self._checkpointed)

    def _encode(
        self, x: torch.Tensor, masks: torch.Tensor | None, last: int, keep: Sequence[int] = ()
    ) -> tuple[torch.Tensor, dict[int, torch.Tensor], tuple[int, int]]:
        """Run embeddings and blocks ``0..last``; return the last output and those in ``keep``."""
        kept: dict[int, torch.Tensor] = {}
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.frozen_blocks == 0):
            x, grid = self.prepare_tokens(x, masks)
        extra = self._block_inputs(x, grid)
        for index in range(last + 1):
            if index < self.frozen_blocks:
                with torch.no_grad():
                    x = self.blocks[index](x, *extra)
            else:
                x = self._run_block(index, x, *extra)
            if index in keep:
                kept[index] = x
        return x, kept, grid

    def forward_features(
        self, x: torch.Tensor, masks: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Final-norm tokens ``[cls, registers..., patches...]``, shape (B, 1 + R + N, D)."""
        x, _, _ = self._encode(x, masks, self.depth - 1)
        return self.norm(x)

    def intermediate_maps(self, x: torch.Tensor, norm: bool = True) -> list[torch.Tensor]:
        """Patch-token maps ``(B, D, ceil(H/p), ceil(W/p))`` of the ``out_indices`` blocks, in order.

        ``norm=True`` applies the shared final ``norm`` (DINOv2/DINOv3
        ``get_intermediate_layers(norm=True)``); ``norm=False`` gives the raw block outputs after
        the residual, the official SoMA heads' taps. Blocks after the last requested one are
        skipped.
        """
        batch = x.shape[0]
        _, kept, (grid_h, grid_w) = self._encode(x, None, self.out_indices[-1], self.out_indices)
        maps = []
        for index in self.out_indices:
            tokens = self.norm(kept[index]) if norm else kept[index]
            tokens = tokens[:, self.num_prefix_tokens :]
            maps.append(tokens.transpose(1, 2).reshape(batch, self.embed_dim, grid_h, grid_w))
        return maps

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"block{i}": (B, D, ceil(H/p), ceil(W/p))}`` for each i in ``out_indices``: the
        normalised maps of ``intermediate_maps``."""
        maps = self.intermediate_maps(x, norm=True)
        return {f"block{i}": m.contiguous() for i, m in zip(self.out_indices, maps)}
