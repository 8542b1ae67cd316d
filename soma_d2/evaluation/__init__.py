"""Domain-generalization evaluation: per-domain evaluators and the one-table summary."""
from __future__ import annotations

from detectron2.data import MetadataCatalog

from .coco_evaluator import DGCOCOEvaluator
from .dg_table import METRIC_KEYS, DGTable, dg_run_name, dg_source_domain
from .sem_seg_evaluator import DGSemSegEvaluator, load_sem_seg_label
from .voc_evaluator import VOC_METRICS, DGVOCEvaluator, voc_ap, voc_detection_metrics

__all__ = [
    "METRIC_KEYS",
    "VOC_METRICS",
    "DGCOCOEvaluator",
    "DGTable",
    "DGVOCEvaluator",
    "build_dg_evaluator",
    "dg_run_name",
    "dg_source_domain",
    "voc_ap",
    "voc_detection_metrics",
    "DGSemSegEvaluator",
    "load_sem_seg_label",
]


def build_dg_evaluator(cfg, dataset_name: str, output_dir: str | None = None):
    """The DG evaluator of a data set, chosen by its metadata `evaluator_type`.

    `dg_voc` -> `DGVOCEvaluator` (metric from `cfg.TEST.DG.VOC_METRIC`), `dg_coco` ->
    `DGCOCOEvaluator`; anything else is refused with the type named, so that a trainer can fall
    back to its own evaluators (e.g. semantic segmentation) before calling this.
    """
    evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", None)
    if evaluator_type == "dg_voc":
        return DGVOCEvaluator(dataset_name, output_dir, metric=cfg.TEST.DG.VOC_METRIC)
    if evaluator_type == "dg_coco":
        return DGCOCOEvaluator(dataset_name, output_dir)
    raise ValueError(
        f"no DG evaluator for data set {dataset_name!r} with evaluator_type {evaluator_type!r} "
        "(expected 'dg_voc' or 'dg_coco')"
    )
