#!/usr/bin/env python
"""Convert Mapillary Vistas v1.2 labels (66 classes) to Cityscapes train ids, once.

    python datasets/prepare_mapillary.py --root $DETECTRON2_DATASETS/mapillary

For `training` and `validation`, reads `<root>/<split>/v1.2/labels/<id>.png` (the v2.0 release)
or `<root>/<split>/labels/<id>.png` (the v1.x release) -- palette PNGs of the v1.2 ids -- and
writes `<root>/<split>/labels_trainIds/<id>.png` (8-bit train ids, 255 = ignore), which
`mapillary_train` / `mapillary_val` read. The 66 -> 19 mapping is the official SoMA
conversion by label name (`mapillary_name_to_train_id`, `MAPILLARY_ID_TO_TRAIN_ID`). Progress about every 5 %; ids outside 0-65 (e.g. v2.0 labels given
by mistake) are reported once with pixel counts.

Then, as the official preparation (tools/convert_datasets/mapillary_resize.py), a half-size copy of
the validation split: `<root>/validation/half/images/<id>.jpg` (bicubic) and
`<root>/validation/half/labels_trainIds/<id>.png` (nearest), W/2 x H/2, which `mapillary_val_half`
reads (the official Mapillary test set, later resized to fit 2048x1024).
"""
from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]  # _prepare_labels beside this script; soma_d2

from _prepare_labels import label_files_in, pending, prepare_labels_cli  # noqa: E402

from soma_d2.data.catalog import DatasetFormatError  # noqa: E402
from soma_d2.data.seg_datasets import default_seg_root  # noqa: E402

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
    return pending(jobs, overwrite)


def write_half_validation(root: str, overwrite: bool = False) -> int:
    """Write the half-size validation copy (module doc); returns the number of images written."""
    from PIL import Image

    split = os.path.join(root, "validation")
    images, labels = os.path.join(split, "images"), os.path.join(split, "labels_trainIds")
    if not os.path.isdir(images) or not os.path.isdir(labels):
        return 0
    out_img = os.path.join(split, "half", "images")
    out_lbl = os.path.join(split, "half", "labels_trainIds")
    os.makedirs(out_img, exist_ok=True)
    os.makedirs(out_lbl, exist_ok=True)
    written = 0
    for name in sorted(os.listdir(labels)):
        stem = os.path.splitext(name)[0]
        src_img = os.path.join(images, stem + ".jpg")
        dst_img, dst_lbl = os.path.join(out_img, stem + ".jpg"), os.path.join(out_lbl, name)
        if not os.path.isfile(src_img):
            raise DatasetFormatError(f"{src_img}: the image of label {name} is missing")
        if not overwrite and os.path.exists(dst_img) and os.path.exists(dst_lbl):
            continue
        with Image.open(src_img) as im:
            size = (im.width // 2, im.height // 2)
            im.convert("RGB").resize(size, Image.BICUBIC).save(dst_img, quality=95)
        with Image.open(os.path.join(labels, name)) as lb:
            lb.resize(size, Image.NEAREST).save(dst_lbl)
        written += 1
    return written


def main(argv: list[str] | None = None) -> int:
    status = prepare_labels_cli(argv, release="mapillary", default_folder="mapillary",
                                find_jobs=find_jobs, description=__doc__)
    if status:
        return status
    import argparse

    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--root", default=None)
    parser.add_argument("--overwrite", action="store_true")
    args, _ = parser.parse_known_args(argv)
    root = args.root or os.path.join(default_seg_root(), "mapillary")
    try:
        n = write_half_validation(root, args.overwrite)
    except DatasetFormatError as e:
        print(f"[prepare_mapillary] error: {e}", file=sys.stderr, flush=True)
        return 1
    print(f"[prepare_mapillary] half-size validation copy: {n} images written", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
