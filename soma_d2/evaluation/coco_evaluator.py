"""COCO AP for one domain: Detectron2's `COCOEvaluator` with the official pycocotools path.

The compiled fast evaluator is unavailable in the pure-Python Detectron2 build this project
supports, and papers report the official implementation, so `use_fast_impl=False` is fixed here.
What this class adds is the domain the DG table groups results by, and making sure a lazily
registered COCO domain has its category-id mapping in the metadata before evaluation.
"""
from __future__ import annotations

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import COCOEvaluator

from ..data.catalog import domain_from_name

__all__ = ["DGCOCOEvaluator"]


class DGCOCOEvaluator(COCOEvaluator):
    """COCO AP/AP50/... (percent) of one registered domain (`evaluator_type="dg_coco"`).

    Results keep Detectron2's format (`{"bbox": {"AP", "AP50", "AP75", "APs", ..., "AP-<class>"}}`);
    the DG table reads `bbox/AP` for these domains.
    """

    def __init__(
        self,
        dataset_name: str,
        output_dir: str | None = None,
        tasks: tuple[str, ...] = ("bbox",),
        distributed: bool = True,
        max_dets_per_image: int | None = None,
    ) -> None:
        meta = MetadataCatalog.get(dataset_name)
        if hasattr(meta, "json_file") and not hasattr(meta, "thing_dataset_id_to_contiguous_id"):
            DatasetCatalog.get(dataset_name)  # load_coco_json fills the class/id metadata
        super().__init__(
            dataset_name,
            tasks=tasks,
            distributed=distributed,
            output_dir=output_dir,
            max_dets_per_image=max_dets_per_image,
            use_fast_impl=False,
        )
        self.domain = meta.get("domain", None) or domain_from_name(dataset_name)
