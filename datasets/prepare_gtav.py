#!/usr/bin/env python
"""Convert GTAV labels (Cityscapes label ids) to Cityscapes train ids, once, before training.

    python datasets/prepare_gtav.py --root $DETECTRON2_DATASETS/gta

reads `<root>/labels/<id>.png` (palette PNGs whose indices are Cityscapes label ids 0-33) and
writes `<root>/labels/<id>_labelTrainIds.png` (8-bit, the 19 train ids, 255 = ignore), the file
the `gtav_train` data set reads. Prints a progress line about every 5 % and, once, the ids
outside 0-33 it found (with pixel counts); re-running skips converted files (`--overwrite`).
"""
from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]  # _prepare_labels beside this script; soma_d2

from _prepare_labels import prepare_labels_cli, train_ids_beside  # noqa: E402

find_jobs = train_ids_beside("labels")


def main(argv: list[str] | None = None) -> int:
    return prepare_labels_cli(argv, release="gtav", default_folder="gta", find_jobs=find_jobs,
                              description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
