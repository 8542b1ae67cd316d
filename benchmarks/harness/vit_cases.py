"""ViT shapes and per-method model setups shared by the training and inference benchmarks.

Every method starts from the same randomly initialised DINOv2-shaped ViT (same seed) and differs
only in what trains, exactly as ``MODEL.SOMA.MODE`` does in the detector: SoMA and LoRA adapt the
same layers of the same blocks with the same rank and freeze the blocks before them (which then
run under ``no_grad``); full fine-tuning trains everything; the frozen backbone trains nothing.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from soma_d2.modeling.vit import DinoVisionTransformer
from soma_d2.soma import SoMAConfig, inject_soma

__all__ = ["METHODS", "VIT_PRESETS", "ViTSpec", "build_vit", "configure_method"]

METHODS = ("soma", "lora", "full", "frozen")


@dataclass(frozen=True)
class ViTSpec:
    """A DINOv2-shaped ViT/16 workload: width, depth, heads, input side, batch and SoMA rank.

    ``start_block`` defaults to the recipe's 8 of 24 scaled to the depth (4 of 12).
    """

    embed_dim: int
    depth: int
    num_heads: int
    img_size: int
    batch: int
    rank: int = 16
    patch_size: int = 16
    start_block: int | None = None

    @property
    def first_adapted_block(self) -> int:
        if self.start_block is not None:
            return self.start_block
        return max(1, round(8 * self.depth / 24))

    @property
    def tokens(self) -> int:
        side = -(-self.img_size // self.patch_size)
        return 1 + side * side


# T: smoke-test size. S: ViT-S/16 at 224. B: ViT-B/16 at 224 (the CPU reference).
# L: ViT-L/16 at 1024 (meant for a GPU; far too slow on a 2-core CPU).
VIT_PRESETS = {
    "T": ViTSpec(embed_dim=32, depth=4, num_heads=2, img_size=32, batch=2, rank=4),
    "S": ViTSpec(embed_dim=384, depth=12, num_heads=6, img_size=224, batch=2),
    "B": ViTSpec(embed_dim=768, depth=12, num_heads=12, img_size=224, batch=2),
    "L": ViTSpec(embed_dim=1024, depth=24, num_heads=16, img_size=1024, batch=1),
}


LAYER_SCALE = 0.1


def build_vit(spec: ViTSpec, seed: int = 0, device: torch.device | str = "cpu"
              ) -> DinoVisionTransformer:
    """The plain ViT of ``spec`` with deterministic random weights (same seed, same weights).

    Layer-scale starts at 0.1 rather than DINOv2's 1e-5 initialisation: pretrained layer-scales
    are of that order, and with 1e-5 every block would be close to the identity, hiding
    numerical differences between the models that the benchmarks compare.
    """
    torch.manual_seed(seed)
    vit = DinoVisionTransformer(img_size=spec.img_size, patch_size=spec.patch_size,
                                embed_dim=spec.embed_dim, depth=spec.depth,
                                num_heads=spec.num_heads, layer_scale_init=LAYER_SCALE)
    return vit.to(device)


def configure_method(vit: DinoVisionTransformer, spec: ViTSpec, method: str) -> int:
    """Apply a fine-tuning method to ``vit`` in place; returns its trainable parameter count.

    ``soma``: minor-component adapters (the paper); ``lora``: the same adapter layers with
    Kaiming A and zero B; both in blocks >= ``first_adapted_block``, all six targets, biases of
    adapted layers trainable, earlier blocks frozen. ``full``: every parameter trains.
    ``frozen``: none does (a head on top is all that trains).
    """
    start = spec.first_adapted_block
    if method in ("soma", "lora"):
        init = "minor" if method == "soma" else "lora"
        inject_soma(vit, SoMAConfig(rank=spec.rank, start_block=start, init=init))
        vit.frozen_blocks = start
    elif method == "full":
        vit.requires_grad_(True)
        vit.frozen_blocks = 0
    elif method == "frozen":
        vit.requires_grad_(False)
        vit.frozen_blocks = vit.depth
    else:
        raise ValueError(f"unknown fine-tuning method {method!r}; accepted: {list(METHODS)}")
    return sum(p.numel() for p in vit.parameters() if p.requires_grad)
