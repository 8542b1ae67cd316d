"""Semantic-segmentation mapper with mmseg-style training augmentations.

mmseg's `RandomResize(scale=(2048, 512), ratio_range=(0.5, 2.0), keep_ratio=True)`,
`RandomCrop(512, cat_max_ratio=0.75)`, `RandomFlip`, `PhotoMetricDistortion` expressed with
Detectron2's augmentations: the short side is resized to 0.5-2.0x of `INPUT.SEM_SEG_RESIZE`'s
short size (the long side capped at the same multiple of its long size, as keep_ratio does), then
a crop in which no category covers more than `INPUT.CROP.SINGLE_CATEGORY_MAX_AREA`, a horizontal
flip, and brightness/contrast/saturation jitter each applied with probability 0.5 (mmseg also
jitters the hue; Detectron2 has no hue augmentation, so that one is left out). Testing resizes to
`INPUT.MIN_SIZE_TEST` / `MAX_SIZE_TEST`. Resizes interpolate as mmcv does (cv2 bilinear for
images, cv2 nearest for labels; `soma_d2.data.resize`), not with PIL. This is not the release's
GTAV pipeline (MS-512: a short side drawn from 256..1024, and a test resize per target data set,
e.g. Cityscapes 2048x1024, BDD 1280x720; the release's `sora_dinov2-L_mask2former.py`); the
Mask2Former project's mapper implements that one.

`SemSegDatasetMapper` is the detection pipeline's `RobustDatasetMapper` (one image reader for every
pipeline: undecodable or truncated files fail naming the file, or are skipped and counted with
`DATALOADER.SKIP_BAD_IMAGES`; 16-bit, CMYK, palette and EXIF-rotated images decode the same way;
labels are read as raw ids) plus what segmentation needs around it: the original image size for
the model's output resolution, no label decoding at test time (the evaluator reads the files),
and label ids outside the classes mapped to the ignore label and reported once instead of
crashing the loss.
"""
from __future__ import annotations

import logging

import torch
from detectron2.config import CfgNode
from detectron2.data import transforms as T

from .catalog import DatasetFormatError
from .resize import CV2Resize
from .robust_mapper import RobustDatasetMapper
from .seg_labels import UnexpectedLabelIds

__all__ = [
    "SemSegDatasetMapper",
    "build_sem_seg_augmentations",
    "build_sem_seg_mapper",
    "image_size_from_header",
]

logger = logging.getLogger(__name__)

_EXIF_ORIENTATION = 0x0112


def image_size_from_header(path: str) -> tuple[int, int]:
    """(height, width) of an image as Detectron2's `read_image` returns it (EXIF rotation
    applied), reading only the file header."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            width, height = im.size
            if im.getexif().get(_EXIF_ORIENTATION, 1) in (5, 6, 7, 8):
                width, height = height, width
    except OSError as e:
        raise DatasetFormatError(f"cannot read image {path}: {e}") from e
    return height, width


def build_sem_seg_augmentations(cfg: CfgNode, is_train: bool) -> list[T.Augmentation]:
    """The recipe's training augmentations (see the module doc), or the test resize."""
    if not is_train:
        if cfg.INPUT.MIN_SIZE_TEST <= 0:
            return []
        return [CV2Resize(T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST))]
    lo, hi = (float(x) for x in cfg.INPUT.RANDOM_SCALE)
    if not 0 < lo <= hi:
        raise ValueError(
            f"INPUT.RANDOM_SCALE={tuple(cfg.INPUT.RANDOM_SCALE)} must be 0 < min <= max"
        )
    long_side, short_side = (int(x) for x in cfg.INPUT.SEM_SEG_RESIZE)
    augs: list[T.Augmentation] = [
        CV2Resize(T.ResizeShortestEdge(
            short_edge_length=(round(short_side * lo), round(short_side * hi)),
            max_size=round(long_side * hi),
            sample_style="range",
        ))
    ]
    if cfg.INPUT.CROP.ENABLED:
        augs.append(
            T.RandomCrop_CategoryAreaConstraint(
                cfg.INPUT.CROP.TYPE,
                tuple(cfg.INPUT.CROP.SIZE),
                cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA,
                cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            )
        )
    augs.append(T.RandomFlip(horizontal=True))
    if cfg.INPUT.PHOTOMETRIC:
        augs += [
            T.RandomApply(T.RandomBrightness(0.875, 1.125), prob=0.5),
            T.RandomApply(T.RandomContrast(0.5, 1.5), prob=0.5),
            T.RandomApply(T.RandomSaturation(0.5, 1.5), prob=0.5),
        ]
    return augs


class SemSegDatasetMapper(RobustDatasetMapper):
    """`RobustDatasetMapper` for `sem_seg_file_name` records (see the module doc)."""

    def __init__(self, is_train: bool, augmentations: list[T.Augmentation], image_format: str,
                 num_classes: int, ignore_label: int = 255, skip_bad_images: bool = False):
        super().__init__(is_train=is_train, augmentations=augmentations, image_format=image_format,
                         skip_bad_images=skip_bad_images)
        self.num_classes = int(num_classes)
        self.ignore_label = int(ignore_label)
        self._unexpected = UnexpectedLabelIds(self.num_classes, self.ignore_label)
        self._reported = False

    def __call__(self, dataset_dict: dict) -> dict | None:
        """Map one record (height/width from the decoded image when absent); None when a bad
        image or label is skipped (training with `DATALOADER.SKIP_BAD_IMAGES`)."""
        dataset_dict = dict(dataset_dict)
        if not self.is_train:
            dataset_dict.pop("sem_seg_file_name", None)  # the evaluator reads the label files
        out = super().__call__(dataset_dict)
        if out is not None and "sem_seg" in out:
            out["sem_seg"] = self._ignore_unexpected(out["sem_seg"], dataset_dict)
        return out

    def _ignore_unexpected(self, sem_seg: torch.Tensor, record: dict) -> torch.Tensor:
        source = record.get("sem_seg_file_name", record["file_name"])
        sem_seg = self._unexpected.apply(sem_seg, source)
        if self._unexpected.pixels and not self._reported:
            logger.warning(
                "%s holds label ids outside 0..%d and %d ({%s}); they are ignored in training. "
                "Convert the labels to Cityscapes train ids (datasets/prepare_*.py); further "
                "files with such ids are not reported.",
                source, self.num_classes - 1, self.ignore_label, self._unexpected.summary(),
            )
            self._reported = True
        return sem_seg


def build_sem_seg_mapper(cfg: CfgNode, is_train: bool) -> SemSegDatasetMapper:
    """A `SemSegDatasetMapper` using `build_sem_seg_augmentations`."""
    return SemSegDatasetMapper.from_soma_cfg(
        cfg, is_train, build_sem_seg_augmentations(cfg, is_train),
        num_classes=cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
        ignore_label=cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
    )
