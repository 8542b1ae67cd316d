"""The official Mask2Former segmentation input pipeline (`INPUT.DATASET_MAPPER_NAME
mask2former_semseg`).

Training (sheet 2.3): resize ("choice": a short side drawn from `INPUT.MIN_SIZE_TRAIN`, long side
<= `INPUT.MAX_SIZE_TRAIN`, mmseg MS-512 / MS-1024; "ratio": mmseg RandomResize of
`INPUT.SEM_SEG_RESIZE` by U(`INPUT.RANDOM_SCALE`), RR-1024) -> random crop `INPUT.CROP.SIZE` with
the category-ratio rule (`INPUT.CROP.SINGLE_CATEGORY_MAX_AREA`, 10 tries) -> horizontal flip ->
mmseg photometric distortion. Test: the first `MODEL.MASK2FORMER.TEST_RESIZE` rule whose substring
is in the image path gives the keep-ratio resize of that target data set (Cityscapes 2048x1024,
BDD 1280x720 or 2048x1024, Mapillary half-size 2048x1024, ACDC 1920x1080); labels stay at the
original size (the evaluator reads the files, the model resizes its output back). Every resize is
mmcv's: cv2 bilinear for images, cv2 nearest for labels, mmcv/mmseg output-size rounding.
"""
from __future__ import annotations

from detectron2.config import CfgNode
from detectron2.data import transforms as T

from soma_d2.data.mapper_registry import MAPPER_REGISTRY
from soma_d2.data.resize import CV2Resize
from soma_d2.data.seg_mapper import SemSegDatasetMapper

from .subset import restrict_to_subset
from .transforms import (
    ChoiceShortestEdgeResize,
    KeepRatioResize,
    RatioRandomResize,
    SegPhotoMetricDistortion,
)

__all__ = ["Mask2FormerSemSegMapper", "mask2former_semseg", "parse_test_resize"]

TRAIN_RESIZES = ("choice", "ratio")


def parse_test_resize(rules) -> list[tuple[str, int, int]]:
    """Validate `MODEL.MASK2FORMER.TEST_RESIZE` ([substring, long, short] entries)."""
    parsed = []
    for rule in rules:
        if (len(rule) != 3 or not isinstance(rule[0], str) or not rule[0]
                or any(not isinstance(v, int) or v <= 0 for v in rule[1:])):
            raise ValueError(
                f"MODEL.MASK2FORMER.TEST_RESIZE entry {list(rule)!r} must be [path substring, "
                "long side, short side] with positive integer sides, e.g. ['bdd100k', 1280, 720]"
            )
        parsed.append((rule[0], int(rule[1]), int(rule[2])))
    return parsed


def build_train_augmentations(cfg: CfgNode) -> list[T.Augmentation]:
    kind = cfg.MODEL.MASK2FORMER.TRAIN_RESIZE
    if kind == "choice":
        resize = ChoiceShortestEdgeResize(list(cfg.INPUT.MIN_SIZE_TRAIN), cfg.INPUT.MAX_SIZE_TRAIN)
    elif kind == "ratio":
        long, short = (int(v) for v in cfg.INPUT.SEM_SEG_RESIZE)
        resize = RatioRandomResize(long, short, tuple(cfg.INPUT.RANDOM_SCALE))
    else:
        raise ValueError(f"MODEL.MASK2FORMER.TRAIN_RESIZE={kind!r}; accepted: {TRAIN_RESIZES}")
    augs: list[T.Augmentation] = [resize]
    if cfg.INPUT.CROP.ENABLED:
        augs.append(T.RandomCrop_CategoryAreaConstraint(
            cfg.INPUT.CROP.TYPE, tuple(cfg.INPUT.CROP.SIZE),
            cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA, cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE))
    augs.append(T.RandomFlip(horizontal=True))
    if cfg.INPUT.PHOTOMETRIC:
        augs.append(SegPhotoMetricDistortion(cfg.INPUT.FORMAT))
    return augs


class Mask2FormerSemSegMapper(SemSegDatasetMapper):
    """`SemSegDatasetMapper` whose test resize depends on the image's data set (module doc)."""

    def __init__(self, *args, test_resize: list[tuple[str, int, int]] = (),
                 default_test: list[T.Augmentation] = (), **kwargs):
        super().__init__(*args, **kwargs)
        self.test_resize = list(test_resize)
        self.default_test = T.AugmentationList(list(default_test))
        self._by_rule = {r: T.AugmentationList([KeepRatioResize(r[1], r[2])])
                         for r in self.test_resize}

    def test_augmentations(self, file_name: str) -> T.AugmentationList:
        for rule in self.test_resize:
            if rule[0] in file_name:
                return self._by_rule[rule]
        return self.default_test

    def __call__(self, dataset_dict: dict) -> dict:
        if not self.is_train:
            self.augmentations = self.test_augmentations(dataset_dict["file_name"])
        return super().__call__(dataset_dict)


@MAPPER_REGISTRY.register()
def mask2former_semseg(cfg: CfgNode, is_train: bool) -> Mask2FormerSemSegMapper:
    """The pipeline of the module doc for `cfg` (registered under this function's name). With
    `MODEL.MASK2FORMER.TRAIN_SUBSET_LIST`, the training sets are restricted to the listed images
    first (the train loader reads the data sets after building its mapper)."""
    if is_train and cfg.MODEL.MASK2FORMER.TRAIN_SUBSET_LIST:
        restrict_to_subset(cfg.DATASETS.TRAIN, cfg.MODEL.MASK2FORMER.TRAIN_SUBSET_LIST)
    default_test = []
    if cfg.INPUT.MIN_SIZE_TEST > 0:
        default_test = [CV2Resize(T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST,
                                                       cfg.INPUT.MAX_SIZE_TEST))]
    return Mask2FormerSemSegMapper(
        is_train=is_train,
        augmentations=build_train_augmentations(cfg) if is_train else default_test,
        image_format=cfg.INPUT.FORMAT,
        num_classes=cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
        ignore_label=cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
        test_resize=parse_test_resize(cfg.MODEL.MASK2FORMER.TEST_RESIZE),
        default_test=default_test,
    )
