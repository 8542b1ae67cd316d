#!/usr/bin/env python
"""Convert SYNTHIA-RAND-CITYSCAPES labels to Cityscapes train ids, once, before training.

    python datasets/prepare_synthia.py --root $DETECTRON2_DATASETS/synthia

reads `<root>/GT/LABELS/<id>.png` (16-bit colour PNGs, the class id 0-22 in the first channel;
read with OpenCV because PIL truncates 16-bit colour) and writes
`<root>/GT/LABELS/<id>_labelTrainIds.png` (8-bit train ids, 255 = ignore), the file the
`synthia_train` data set reads. Void (0), parking-slot (13), road-work (14) and lane marking (22)
become 255. Progress about every 5 %; ids outside 0-22 are reported once with pixel counts.
"""
from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]  # _prepare_labels beside this script; soma_d2

from _prepare_labels import prepare_labels_cli, train_ids_beside  # noqa: E402

find_jobs = train_ids_beside("GT", "LABELS")


def main(argv: list[str] | None = None) -> int:
    return prepare_labels_cli(argv, release="synthia", default_folder="synthia",
                              find_jobs=find_jobs, description=__doc__, channel=0)


if __name__ == "__main__":
    sys.exit(main())
