"""Which dataset mapper a config gets: a registry keyed by `INPUT.DATASET_MAPPER_NAME`.

Detectron2's own projects (Mask2Former, DETR) choose their input pipeline by name; the paper's heads
in `projects/` need their own pipelines (Co-DINO's pad-to-1024 detection pipeline, Mask2Former's
segmentation crops), so they register a builder here instead of subclassing the trainer. The
built-in pipelines are registered as "detection" and "sem_seg"; the empty name means the model's
default (the engine chooses "sem_seg" for semantic segmentors, "detection" otherwise).
"""
from __future__ import annotations

from collections.abc import Callable

from detectron2.config import CfgNode
from fvcore.common.registry import Registry

__all__ = ["MAPPER_REGISTRY", "build_mapper"]

MAPPER_REGISTRY = Registry("DATASET_MAPPER")
MAPPER_REGISTRY.__doc__ = "Builders `fn(cfg, is_train) -> mapper`, chosen by INPUT.DATASET_MAPPER_NAME."


@MAPPER_REGISTRY.register()
def detection(cfg: CfgNode, is_train: bool):
    """Registered as "detection": `RobustDatasetMapper` with the recipe's augmentations."""
    from .detection_mapper import build_detection_mapper

    return build_detection_mapper(cfg, is_train)


@MAPPER_REGISTRY.register()
def sem_seg(cfg: CfgNode, is_train: bool):
    """Registered as "sem_seg": `SemSegDatasetMapper` with the recipe's augmentations."""
    from .seg_mapper import build_sem_seg_mapper

    return build_sem_seg_mapper(cfg, is_train)


def build_mapper(cfg: CfgNode, is_train: bool, default: str = "detection"
                 ) -> Callable[[dict], dict | None]:
    """The mapper `INPUT.DATASET_MAPPER_NAME` names, or `default` when it is empty.

    The caller that knows the model picks the default (the engine: "sem_seg" for semantic
    segmentors, see `soma_d2.modeling.segmentation.default_mapper_name`), so the data package needs no
    knowledge of the models.
    """
    name = cfg.INPUT.DATASET_MAPPER_NAME or default
    if name not in MAPPER_REGISTRY:
        raise KeyError(f"INPUT.DATASET_MAPPER_NAME={name!r} is not registered; registered: "
                       f"{sorted(k for k, _ in MAPPER_REGISTRY)} (and '' for the default)")
    return MAPPER_REGISTRY.get(name)(cfg, is_train)
