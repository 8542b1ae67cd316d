"""Dataset mappers with the official recipe's augmentations, built from config.

Detection follows the SoMA/Co-DETR recipe: large-scale jitter (random resize 0.1-2.0 of the target
size), fixed-size crop, horizontal flip and photometric distortion; testing resizes the longer side
to `INPUT.IMAGE_SIZE`. Detectron2's `DatasetMapper` does the rest (annotations, transforms).
"""
from __future__ import annotations

from detectron2.config import CfgNode
from detectron2.data import DatasetMapper
from detectron2.data import transforms as T

__all__ = ["build_detection_augmentations", "build_detection_mapper"]


def build_detection_augmentations(cfg: CfgNode, is_train: bool) -> list[T.Augmentation]:
    """The recipe's augmentation list for training, or the deterministic test resize."""
    size = int(cfg.INPUT.IMAGE_SIZE)
    if not is_train:
        return [T.ResizeShortestEdge(short_edge_length=size, max_size=size)]
    lo, hi = (float(x) for x in cfg.INPUT.RANDOM_SCALE)
    if not 0 < lo <= hi:
        raise ValueError(f"INPUT.RANDOM_SCALE={tuple(cfg.INPUT.RANDOM_SCALE)} must be 0 < min <= max")
    augs: list[T.Augmentation] = [
        T.ResizeScale(min_scale=lo, max_scale=hi, target_height=size, target_width=size),
        T.FixedSizeCrop(crop_size=(size, size), pad=False),
        T.RandomFlip(horizontal=True),
    ]
    if cfg.INPUT.PHOTOMETRIC:
        augs += [
            T.RandomBrightness(0.875, 1.125),
            T.RandomContrast(0.5, 1.5),
            T.RandomSaturation(0.5, 1.5),
        ]
    return augs


def build_detection_mapper(cfg: CfgNode, is_train: bool) -> DatasetMapper:
    """A Detectron2 `DatasetMapper` using `build_detection_augmentations`."""
    return DatasetMapper(
        is_train=is_train,
        augmentations=build_detection_augmentations(cfg, is_train),
        image_format=cfg.INPUT.FORMAT,
    )
