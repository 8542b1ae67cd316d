"""The built-in detection input pipeline ("detection" in the mapper registry), recipe-like.

Detection takes the main steps of the SoMA/Co-DETR recipe: large-scale jitter (random resize
0.1-2.0 of the target size), fixed-size crop, horizontal flip and photometric distortion; testing
resizes the longer side to `INPUT.IMAGE_SIZE`. It is not the official pipeline: no padding to
1024x1024 with 114, and the photometric step always applies brightness, contrast and saturation
(the release's `sora_dinov2-L_codetr_dg.py` pipeline flips a coin per operation and adds hue and
channel swap). Detectron2's `DatasetMapper` (through `RobustDatasetMapper`) does the rest.
"""
from __future__ import annotations

from detectron2.config import CfgNode
from detectron2.data import transforms as T

from .robust_mapper import RobustDatasetMapper

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


def build_detection_mapper(cfg: CfgNode, is_train: bool) -> RobustDatasetMapper:
    """A `RobustDatasetMapper` with `build_detection_augmentations` and `SKIP_BAD_IMAGES`."""
    return RobustDatasetMapper.from_soma_cfg(cfg, is_train,
                                             build_detection_augmentations(cfg, is_train))
