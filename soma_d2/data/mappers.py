"""Which dataset mapper a config gets: a registry keyed by `INPUT.DATASET_MAPPER_NAME`.

Detectron2's own projects (Mask2Former, DETR) choose their input pipeline by name; the paper's heads
in `projects/` need their own pipelines (Co-DINO's pad-to-1024 detection pipeline, Mask2Former's
segmentation crops), so they register a builder here instead of subclassing the trainer. The empty
name keeps the built-in choice: segmentation mapper for semantic segmentors, detection otherwise.
"""
from __future__ import annotations

from collections.abc import Callable

from detectron2.config import CfgNode
from fvcore.common.registry import Registry

__all__ = ["MAPPER_REGISTRY", "build_mapper"]

MAPPER_REGISTRY = Registry("DATASET_MAPPER")
MAPPER_REGISTRY.__doc__ = "Builders `fn(cfg, is_train) -> mapper`, chosen by INPUT.DATASET_MAPPER_NAME."


def build_mapper(cfg: CfgNode, is_train: bool) -> Callable[[dict], dict | None]:
    """The mapper `INPUT.DATASET_MAPPER_NAME` names, or the built-in one when it is empty."""
    name = cfg.INPUT.DATASET_MAPPER_NAME
    if name:
        if name not in MAPPER_REGISTRY:
            raise KeyError(f"INPUT.DATASET_MAPPER_NAME={name!r} is not registered; registered: "
                           f"{sorted(k for k, _ in MAPPER_REGISTRY)} (and '' for the default)")
        return MAPPER_REGISTRY.get(name)(cfg, is_train)
    from .mapper import build_detection_mapper
    from .seg_mapper import build_sem_seg_mapper, uses_sem_seg

    if uses_sem_seg(cfg):
        return build_sem_seg_mapper(cfg, is_train)
    return build_detection_mapper(cfg, is_train)
