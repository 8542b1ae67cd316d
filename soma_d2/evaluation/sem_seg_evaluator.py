"""mIoU for one segmentation domain: Detectron2's `SemSegEvaluator`, made safe for DG data.

The metric is Detectron2's own (confusion matrix over `stuff_classes`, the ignore label left
out; mIoU, fwIoU, mACC, pACC, per-class IoU and accuracy, boundary IoU when OpenCV is present),
so numbers agree with `SemSegEvaluator` on the same predictions. What this subclass adds:

- a label loader that works under numpy 2 (Detectron2's default calls `np.array(copy=False)`);
- ground-truth ids outside `0..C-1` and the ignore label are counted as ignore and reported
  once per evaluation with their pixel counts, instead of corrupting the confusion matrix;
- a prediction whose size differs from its label file is an error naming the file;
- `sem_seg_evaluation.json` (all metrics, readable without torch) next to Detectron2's files.

Like `SemSegEvaluator` (and unlike mmseg), a class absent from a domain's ground truth is left
out of that domain's mIoU even when it is predicted; on Cityscapes, BDD100K and Mapillary val all
19 classes occur, so both conventions give the same numbers there.
"""
from __future__ import annotations

import json
import os
import warnings
from collections import OrderedDict

import numpy as np
from detectron2.evaluation import SemSegEvaluator
from detectron2.utils.comm import all_gather, is_main_process
from detectron2.utils.file_io import PathManager
from PIL import Image

from ..data.catalog import DatasetFormatError
from ..data.seg_labels import UnexpectedLabelIds
from ..utils import atomic_write_text

__all__ = ["DGSemSegEvaluator", "load_sem_seg_label"]


def load_sem_seg_label(filename: str, dtype=int) -> np.ndarray:
    """A label PNG as a writable integer array (numpy-2 safe replacement of Detectron2's loader)."""
    try:
        with PathManager.open(filename, "rb") as f, Image.open(f) as im:
            return np.array(im, dtype=dtype)
    except OSError as e:
        raise DatasetFormatError(f"cannot read label image {filename}: {e}") from e


class DGSemSegEvaluator(SemSegEvaluator):
    """`SemSegEvaluator` with the DG additions listed in the module doc."""

    def __init__(self, dataset_name: str, output_dir: str | None = None, distributed: bool = True):
        super().__init__(
            dataset_name,
            distributed=distributed,
            output_dir=output_dir,
            sem_seg_loading_fn=self._load_label,
        )
        self._expected_shape: tuple[int, int] | None = None

    def reset(self) -> None:
        super().reset()
        self._unexpected = UnexpectedLabelIds(self._num_classes, self._ignore_label)

    def _load_label(self, filename: str, dtype=int) -> np.ndarray:
        gt = load_sem_seg_label(filename, dtype=dtype)
        if gt.ndim != 2:
            raise DatasetFormatError(
                f"{filename}: label image has shape {gt.shape}; expected one channel of ids"
            )
        if self._expected_shape is not None and gt.shape != self._expected_shape:
            raise DatasetFormatError(
                f"{filename}: label is {gt.shape[0]}x{gt.shape[1]} but the prediction for its "
                f"image is {self._expected_shape[0]}x{self._expected_shape[1]} (height x width)"
            )
        return self._unexpected.apply(gt, filename)

    def process(self, inputs, outputs) -> None:
        with warnings.catch_warnings():
            # Detectron2 calls np.array(tensor, dtype=int): numpy 2 falls back (and warns) because
            # torch's __array__ takes no `copy`; the values are right
            warnings.filterwarnings("ignore", message="__array__ implementation doesn't accept",
                                    category=DeprecationWarning)
            for inp, out in zip(inputs, outputs):
                self._expected_shape = tuple(out["sem_seg"].shape[-2:])
                super().process([inp], [out])
        self._expected_shape = None

    def _report_unexpected(self) -> None:
        found = self._unexpected
        if self._distributed:
            found = UnexpectedLabelIds(self._num_classes, self._ignore_label)
            for part in all_gather(self._unexpected):
                found.merge(part)
        if found.pixels and is_main_process():
            self._logger.warning(
                "%s: ground-truth ids outside 0..%d and %d were counted as ignore: %s",
                self._dataset_name, self._num_classes - 1, self._ignore_label, found.summary(),
            )

    def evaluate(self) -> OrderedDict | None:
        self._report_unexpected()
        results = super().evaluate()
        if results is not None and self._output_dir:
            path = os.path.join(self._output_dir, "sem_seg_evaluation.json")
            atomic_write_text(json.dumps(results["sem_seg"], indent=1), path)
        return results
