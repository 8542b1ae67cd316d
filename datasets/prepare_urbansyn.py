#!/usr/bin/env python
"""Turn UrbanSyn's semantic maps into 8-bit Cityscapes train-id PNGs, once, before training.

    python datasets/prepare_urbansyn.py --root $DETECTRON2_DATASETS/urbansyn

UrbanSyn's `ss/ss_<n>.png` already hold the 19 Cityscapes train ids, with 19 for void; this
writes `ss/ss_<n>_labelTrainIds.png` with void as 255 (the ignore label) and a single channel,
which `urbansyn_train` reads. A colour file is read through its blue channel (OpenCV's
channel 0, as UrbanSyn's loaders do). Ids other than 0-19 and 255 are reported once with counts.
"""
from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]  # _prepare_labels beside this script; soma_d2

from _prepare_labels import prepare_labels_cli, train_ids_beside  # noqa: E402

find_jobs = train_ids_beside("ss")


def main(argv: list[str] | None = None) -> int:
    return prepare_labels_cli(argv, release="urbansyn", default_folder="urbansyn",
                              find_jobs=find_jobs, description=__doc__, channel=2)


if __name__ == "__main__":
    sys.exit(main())
