"""Patch-token feature maps of a ViT's tapped blocks, shared by the DINOv2 and DINOv3 ViTs.

Both ViT families expose the same encoder contract (``_encode(x, masks, last, keep)`` returning the
kept block outputs and the patch grid, ``out_indices``, ``num_prefix_tokens``, ``embed_dim`` and a
final ``norm``), so the tap loop that turns kept tokens into ``(B, D, h, w)`` maps lives once here:
the raw-tap heads (``norm=False``) and the ViTDet pyramid (``norm=True``) then work on either family.
"""
from __future__ import annotations

import torch


class PatchTokenMaps:
    """Mixin for ViTs with the ``_encode`` contract above: tap maps and the backbone ``forward``."""

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
