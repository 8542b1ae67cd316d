"""Unlabelled synthetic scenes under every condition, and the paired views pretraining sees.

The scene generator draws a scene's geometry from its random generator before the weather, so the
same generator state rendered in each of the five conditions gives five images of one scene that
differ only in light and weather. The bank keeps those five renderings per scene (drawn from seeds
disjoint from the detection data); a view mixes two of them with a random weight (light fog,
half-dark dusk, drizzle: conditions between the detection domains) and then jitters gain, colour
balance, gamma and sensor noise, so the pretraining data are broader than the detection domains.
Two views of the same crop of the same scene under independent conditions form a training pair.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from ..data.synthetic import domain_textures, render_scene
from ..data.synthetic.scene_spec import SKY

__all__ = ["CONDITIONS", "PIXEL_MEAN", "PIXEL_STD", "SceneBank", "render_scene_bank"]

CONDITIONS: tuple[str, ...] = tuple(SKY)
# the detector's input normalisation (configs/Base-SoMA-DINOv2.yaml), RGB
PIXEL_MEAN = np.array([123.675, 116.28, 103.53], np.float32)
PIXEL_STD = np.array([58.395, 57.12, 57.375], np.float32)
# keeps the bank's scenes and noise banks apart from the detection data (seeded 0, 1, ...)
_SEED_OFFSET = 1000


@dataclass
class SceneBank:
    """``images[scene, condition]``: uint8 (S, C, H, W, 3) renderings of each scene per condition."""

    images: np.ndarray
    seed: int

    @property
    def num_scenes(self) -> int:
        return int(self.images.shape[0])

    @property
    def size(self) -> int:
        return int(self.images.shape[2])


def render_scene_bank(num_scenes: int, size: int = 256, seed: int = 0,
                      progress: bool = True) -> SceneBank:
    """Render `num_scenes` scenes in all five conditions; a pure function of its arguments."""
    if num_scenes < 1 or size < 16:
        raise ValueError(f"num_scenes must be >= 1 and size >= 16, got {num_scenes}, {size}")
    images = np.empty((num_scenes, len(CONDITIONS), size, size, 3), np.uint8)
    start = time.time()
    for c, condition in enumerate(CONDITIONS):  # condition-major: one noise bank at a time
        textures = domain_textures(_SEED_OFFSET + seed, c, size)
        for s in range(num_scenes):
            rng = np.random.default_rng([_SEED_OFFSET + seed, 99, s])
            image, _ = render_scene(rng, condition, size, None, textures)
            images[s, c] = np.asarray(image)
        if progress:
            print(f"[pretrain] rendered {num_scenes} scenes under {condition} "
                  f"({time.time() - start:.0f} s)", flush=True)
    return SceneBank(images, seed)


def _condition(rng: np.random.Generator, stack: np.ndarray) -> np.ndarray:
    """One random condition for the crops `stack` (C, h, w, 3) of a scene: float32 (h, w, 3)."""
    a, b = rng.integers(0, stack.shape[0], 2)
    weight = rng.uniform(0.0, 1.0)
    img = stack[a].astype(np.float32) * weight + stack[b].astype(np.float32) * (1.0 - weight)
    gain = np.exp(rng.uniform(-0.5, 0.4)) * rng.uniform(0.88, 1.12, 3).astype(np.float32)
    img = img * gain
    gamma = np.exp(rng.uniform(-0.25, 0.25))
    img = 255.0 * (np.clip(img, 0.0, 255.0) / 255.0) ** gamma
    sigma = rng.uniform(0.0, 6.0)
    if sigma > 0.5:
        img = img + rng.standard_normal(img.shape, dtype=np.float32) * sigma
    return np.clip(img, 0.0, 255.0)


def sample_views(
    bank: SceneBank, rng: np.random.Generator, batch: int, side: int, patch: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two views (B, 3, side, side) of the same patch-aligned crops, and the crops' grid offsets.

    Both views of a pair show the same scene crop (flipped together) under independent random
    conditions; offsets (B, 2) are in patches, so that the crop can use the position embedding
    of its true place in the full image.
    """
    if side % patch or side > bank.size:
        raise ValueError(f"crop side {side} must be a multiple of the patch {patch} and <= "
                         f"the bank's image size {bank.size}")
    cells = (bank.size - side) // patch + 1
    views = np.empty((2, batch, side, side, 3), np.float32)
    offsets = np.empty((batch, 2), np.int64)
    for i in range(batch):
        scene = int(rng.integers(0, bank.num_scenes))
        gy, gx = (int(v) for v in rng.integers(0, cells, 2))
        y, x = gy * patch, gx * patch
        stack = bank.images[scene, :, y : y + side, x : x + side]
        flip = rng.random() < 0.5
        for v in range(2):
            img = _condition(rng, stack)
            views[v, i] = img[:, ::-1] if flip else img
        offsets[i] = (gy, cells - 1 - gx) if flip else (gy, gx)
    views = (views - PIXEL_MEAN) / PIXEL_STD
    tensor = torch.from_numpy(np.ascontiguousarray(views.transpose(0, 1, 4, 2, 3)))
    return tensor[0], tensor[1], torch.from_numpy(offsets)
