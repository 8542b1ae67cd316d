"""Pascal VOC mAP for one domain, computed from the dataset dicts in memory.

Detectron2's `PascalVOCDetectionEvaluator` re-parses every XML (and needs `<pose>`,
`<truncated>`, integer boxes), rounds predictions through text files, and loops over detections
in Python for each of 10 IoU thresholds. This evaluator matches its numbers (same greedy
matching, same `difficult` rule, same 1-based "+1" box arithmetic, same 11-point / area AP) but
works on the records the registration produced, so any registered domain can be evaluated,
whatever its source format. Detection-to-ground-truth overlaps are computed once and reused for
every threshold.

Results, in percent like Detectron2's: `{"bbox": {"AP", "AP50", "AP75", "AP50-<class>"...}}`
where `AP` is the mean of the mAPs at IoU 0.50:0.05:0.95 (information only; the DWD benchmark
reports AP50 with the 11-point metric). One deliberate difference: a class without any
non-difficult ground truth in the domain gets AP NaN and is left out of the means (Detectron2
counts it as 0, which makes a domain's mAP depend on classes it does not contain).
"""
from __future__ import annotations

import json
import logging
import math
import os
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.structures import BoxMode
from detectron2.utils import comm
from detectron2.utils.logger import create_small_table

from ..data.catalog import domain_from_name
from ..utils import atomic_write_text

__all__ = ["DGVOCEvaluator", "VOC_METRICS", "voc_ap", "voc_detection_metrics"]

logger = logging.getLogger(__name__)

VOC_METRICS = ("11point", "area")
IOU_THRESHOLDS = tuple(t / 100 for t in range(50, 100, 5))


def voc_ap(rec: np.ndarray, prec: np.ndarray, metric: str = "11point") -> float:
    """AP of one precision/recall curve: VOC2007 11-point interpolation, or area under the curve."""
    if metric == "11point":
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            p = np.max(prec[rec >= t]) if np.sum(rec >= t) > 0 else 0.0
            ap += p / 11.0
        return float(ap)
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def _overlaps(dets: np.ndarray, gts: np.ndarray) -> np.ndarray:
    """IoU matrix (dets x gts) with VOC's inclusive-pixel "+1" arithmetic (boxes 1-based)."""
    ixmin = np.maximum(gts[None, :, 0], dets[:, None, 0])
    iymin = np.maximum(gts[None, :, 1], dets[:, None, 1])
    ixmax = np.minimum(gts[None, :, 2], dets[:, None, 2])
    iymax = np.minimum(gts[None, :, 3], dets[:, None, 3])
    iw = np.maximum(ixmax - ixmin + 1.0, 0.0)
    ih = np.maximum(iymax - iymin + 1.0, 0.0)
    inters = iw * ih
    area_d = (dets[:, 2] - dets[:, 0] + 1.0) * (dets[:, 3] - dets[:, 1] + 1.0)
    area_g = (gts[:, 2] - gts[:, 0] + 1.0) * (gts[:, 3] - gts[:, 1] + 1.0)
    return inters / (area_d[:, None] + area_g[None, :] - inters)


def _to_voc_coords(boxes: np.ndarray) -> np.ndarray:
    """Detectron2's 0-based XYXY boxes -> VOC's 1-based ones (the inverse of the loader's -1)."""
    boxes = np.array(boxes, dtype=np.float64).reshape(-1, 4)
    boxes[:, :2] += 1.0
    return boxes


def _class_ap(
    gt: dict[str, tuple[np.ndarray, np.ndarray]],
    det_ids: list[str],
    det_scores: np.ndarray,
    det_boxes: np.ndarray,
    thresholds: Sequence[float],
    metric: str,
) -> list[float]:
    """APs of one class at each IoU threshold (NaN when the class has no non-difficult GT)."""
    npos = sum(int((~difficult).sum()) for _, difficult in gt.values())
    if npos == 0:
        return [math.nan] * len(thresholds)
    order = np.argsort(-det_scores)  # same sort as Detectron2's voc_eval, for identical ties
    n = len(order)
    ovmax = np.full(n, -np.inf)
    jmax = np.zeros(n, dtype=np.int64)
    by_image: dict[str, list[int]] = {}
    for rank, d in enumerate(order):
        by_image.setdefault(det_ids[d], []).append(rank)
    image_index = {image_id: k for k, image_id in enumerate(gt)}
    det_image = np.empty(n, dtype=np.int64)
    gt_difficult = np.zeros(n, dtype=bool)
    for image_id, ranks in by_image.items():
        ranks_arr = np.asarray(ranks)
        det_image[ranks_arr] = image_index[image_id]
        boxes, difficult = gt[image_id]
        if len(boxes):
            ious = _overlaps(det_boxes[order[ranks_arr]], boxes)
            jmax[ranks_arr] = ious.argmax(axis=1)
            ovmax[ranks_arr] = ious.max(axis=1)
            gt_difficult[ranks_arr] = difficult[jmax[ranks_arr]]
    # a GT can be claimed once: give each (image, gt) key a unique integer
    key = det_image * (1 + max((len(b) for b, _ in gt.values()), default=0)) + jmax
    aps = []
    for t in thresholds:
        hit = ovmax > t
        claim = hit & ~gt_difficult
        first = np.zeros(n, dtype=bool)
        claim_ranks = np.nonzero(claim)[0]
        _, first_pos = np.unique(key[claim_ranks], return_index=True)
        first[claim_ranks[first_pos]] = True
        tp = np.cumsum(first)
        fp = np.cumsum(~hit | (claim & ~first))
        rec = tp / float(npos)
        prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        aps.append(voc_ap(rec, prec, metric))
    return aps


def voc_detection_metrics(
    dataset_dicts: Sequence[dict],
    predictions: Sequence[tuple],
    num_classes: int,
    metric: str = "11point",
    thresholds: Sequence[float] = IOU_THRESHOLDS,
) -> np.ndarray:
    """AP (0..1) per IoU threshold and class, shape (len(thresholds), num_classes).

    `predictions`: (image_id, boxes (N, 4) XYXY 0-based, scores (N,), classes (N,)) per image,
    in the order they were produced. Ground truth comes from `dataset_dicts` (Detectron2 records;
    annotations with `difficult` = 1 are neither positives nor false positives).
    """
    if metric not in VOC_METRICS:
        raise ValueError(f"unknown VOC metric {metric!r}; expected one of {VOC_METRICS}")
    gt_per_class: list[dict[str, tuple[np.ndarray, np.ndarray]]] = [
        {} for _ in range(num_classes)
    ]
    for record in dataset_dicts:
        image_id = str(record["image_id"])
        per_class: list[list] = [[] for _ in range(num_classes)]
        for ann in record.get("annotations", []):
            if ann.get("iscrowd", 0):
                continue
            box = BoxMode.convert(list(ann["bbox"]), ann["bbox_mode"], BoxMode.XYXY_ABS)
            per_class[ann["category_id"]].append((box, bool(ann.get("difficult", 0))))
        for c in range(num_classes):
            boxes = _to_voc_coords([b for b, _ in per_class[c]])
            difficult = np.array([d for _, d in per_class[c]], dtype=bool)
            gt_per_class[c][image_id] = (boxes, difficult)
    known = gt_per_class[0] if num_classes else {}
    det: list[tuple[list[str], list[float], list[np.ndarray]]] = [
        ([], [], []) for _ in range(num_classes)
    ]
    for image_id, boxes, scores, classes in predictions:
        image_id = str(image_id)
        if image_id not in known:
            raise ValueError(f"prediction for image id {image_id!r}, which is not in the data set")
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        scores, classes = np.asarray(scores).tolist(), np.asarray(classes).tolist()
        for box, score, cls in zip(boxes, scores, classes):
            if not 0 <= cls < num_classes:
                raise ValueError(f"predicted class {cls} out of range [0, {num_classes})")
            det[cls][0].append(image_id)
            det[cls][1].append(score)
            det[cls][2].append(box)
    aps = np.zeros((len(thresholds), num_classes))
    for c in range(num_classes):
        ids, scores, boxes = det[c]
        aps[:, c] = _class_ap(
            gt_per_class[c],
            ids,
            np.asarray(scores, dtype=np.float64),
            _to_voc_coords(boxes),
            thresholds,
            metric,
        )
    return aps


class DGVOCEvaluator(DatasetEvaluator):
    """VOC mAP of one registered domain (`evaluator_type="dg_voc"`), for the DG table.

    `metric`: "11point" (VOC2007, the DWD protocol, default) or "area". Distributed runs gather
    predictions on the main process, which returns the results (other ranks return None, as in
    Detectron2's evaluators). With `output_dir`, the results are also written to
    `<output_dir>/dg_voc_<dataset>.json`.
    """

    def __init__(
        self,
        dataset_name: str,
        output_dir: str | None = None,
        metric: str = "11point",
        distributed: bool = True,
    ) -> None:
        if metric not in VOC_METRICS:
            raise ValueError(
                f"DGVOCEvaluator: unknown metric {metric!r}; expected one of {VOC_METRICS}"
            )
        self._dataset_name = dataset_name
        self._output_dir = output_dir
        self._metric = metric
        self._distributed = distributed
        meta = MetadataCatalog.get(dataset_name)
        self._class_names = list(meta.thing_classes)
        self.domain = meta.get("domain", None) or domain_from_name(dataset_name)
        self._cpu = torch.device("cpu")
        self.reset()

    def reset(self) -> None:
        self._predictions: list[tuple] = []

    def process(self, inputs, outputs) -> None:
        for inp, out in zip(inputs, outputs):
            instances = out["instances"].to(self._cpu)
            self._predictions.append(
                (
                    inp["image_id"],
                    instances.pred_boxes.tensor.numpy(),
                    instances.scores.numpy(),
                    instances.pred_classes.numpy(),
                )
            )

    def evaluate(self):
        predictions = self._predictions
        if self._distributed:
            gathered = comm.gather(predictions, dst=0)
            if not comm.is_main_process():
                return None
            predictions = [p for per_rank in gathered for p in per_rank]
        dicts = DatasetCatalog.get(self._dataset_name)
        aps = voc_detection_metrics(dicts, predictions, len(self._class_names), self._metric)
        valid = ~np.isnan(aps[0])  # classes with ground truth (the same at every threshold)
        missing = [c for c, ok in zip(self._class_names, valid) if not ok]
        if not valid.any():
            logger.warning("%s: no ground truth to evaluate against", self._dataset_name)
            per_threshold = np.full(len(IOU_THRESHOLDS), math.nan)
        else:
            per_threshold = aps[:, valid].mean(axis=1) * 100
            if missing:
                logger.warning(
                    "%s: classes without ground truth, left out of the mean: %s",
                    self._dataset_name,
                    missing,
                )
        bbox = OrderedDict(
            AP=float(np.mean(per_threshold)),
            AP50=float(per_threshold[0]),
            AP75=float(per_threshold[IOU_THRESHOLDS.index(0.75)]),
        )
        for name, ap in zip(self._class_names, aps[0]):
            bbox[f"AP50-{name}"] = float(ap * 100)
        logger.info(
            "%s (domain %s, %s VOC metric):\n%s",
            self._dataset_name,
            self.domain,
            self._metric,
            create_small_table(bbox),
        )
        results = OrderedDict(bbox=bbox)
        if self._output_dir:
            os.makedirs(self._output_dir, exist_ok=True)
            path = os.path.join(self._output_dir, f"dg_voc_{self._dataset_name}.json")
            atomic_write_text(json.dumps(
                {"domain": self.domain, "metric": self._metric, **results}, indent=2), path)
        return results
