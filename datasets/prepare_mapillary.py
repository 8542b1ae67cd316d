#!/usr/bin/env python
"""Convert Mapillary Vistas v1.2 labels (66 classes) to Cityscapes train ids, once.

    python datasets/prepare_mapillary.py --root $DETECTRON2_DATASETS/mapillary

For `training` and `validation`, reads `<root>/<split>/v1.2/labels/<id>.png` (the v2.0 release)
or `<root>/<split>/labels/<id>.png` (the v1.x release) -- palette PNGs of the v1.2 ids -- and
writes `<root>/<split>/labels_trainIds/<id>.png` (8-bit train ids, 255 = ignore), which
`mapillary_train` / `mapillary_val` read. The 66 -> 19 mapping is HRDA/MIC's
(`MAPILLARY_ID_TO_TRAIN_ID`). Progress about every 5 %; ids outside 0-65 (e.g. v2.0 labels given
by mistake) are reported once with pixel counts.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from soma_d2.data.seg_datasets import (  # noqa: E402
    DatasetFormatError,
    label_files_in,
    prepare_labels_cli,
)

SPLITS = ("training", "validation")


def find_jobs(root: str, overwrite: bool) -> list[tuple[str, str]]:
    jobs = []
    found = False
    for split in SPLITS:
        labels = os.path.join(root, split, "v1.2", "labels")
        if not os.path.isdir(labels):
            labels = os.path.join(root, split, "labels")
        if not os.path.isdir(labels):
            continue
        found = True
        out = os.path.join(root, split, "labels_trainIds")
        jobs += [(os.path.join(labels, n), os.path.join(out, n)) for n in label_files_in(labels)]
    if not found:
        raise DatasetFormatError(
            f"no Mapillary label folder under {root}: expected <split>/v1.2/labels or "
            f"<split>/labels for split in {list(SPLITS)} (see datasets/README.md)"
        )
    return [(s, d) for s, d in jobs if overwrite or not os.path.exists(d)]


def main(argv: list[str] | None = None) -> int:
    return prepare_labels_cli(argv, release="mapillary", default_folder="mapillary",
                              find_jobs=find_jobs, description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
