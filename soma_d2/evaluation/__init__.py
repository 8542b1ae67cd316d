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

    `dg_voc`/`pascal_voc` -> `DGVOCEvaluator` (metric from `cfg.TEST.DG.VOC_METRIC`),
    `dg_coco`/`coco` -> `DGCOCOEvaluator`, `dg_sem_seg`/`sem_seg` -> `DGSemSegEvaluator`; the
    trainer and every tool use this one dispatch. Anything else is refused with the type named.
    """
    kind = MetadataCatalog.get(dataset_name).get("evaluator_type", None)
    if kind in ("dg_voc", "pascal_voc"):
        return DGVOCEvaluator(dataset_name, output_dir, metric=cfg.TEST.DG.VOC_METRIC)
    if kind in ("dg_coco", "coco"):
        return DGCOCOEvaluator(dataset_name, output_dir)
    if kind in ("dg_sem_seg", "sem_seg"):
        return DGSemSegEvaluator(dataset_name, output_dir)
    raise NotImplementedError(
        f"no evaluator for dataset {dataset_name!r} (metadata evaluator_type={kind!r}); "
        "register it with soma_d2.data.register_voc_domain / register_coco_domain / "
        "register_seg_datasets"
    )
