"""COCO-json domains: Detectron2's own loader, plus the metadata the DG evaluation groups by.

`register_coco_instances` would set `evaluator_type="coco"`, which Detectron2's metadata then
refuses to change; registering directly with `load_coco_json` lets the DG evaluator be selected
by `evaluator_type="dg_coco"` while the loading stays exactly Detectron2's.
"""
from __future__ import annotations

import os

from detectron2.data.datasets.coco import load_coco_json

from .catalog import domain_from_name, register_lazily, require_dir, require_file

__all__ = ["register_coco_domain"]


def register_coco_domain(
    name: str, json_file: str, image_root: str, domain: str | None = None
) -> None:
    """Register a COCO-format detection domain lazily (the json is read on first use).

    Metadata: `json_file`, `image_root`, `domain` (default: the name without its split suffix)
    and `evaluator_type="dg_coco"`. `thing_classes` and `thing_dataset_id_to_contiguous_id` are
    filled by Detectron2's `load_coco_json` when the data set is first loaded (reading a large
    json at import time is what lazy registration avoids); `DGCOCOEvaluator` triggers that load
    when they are still missing.
    """
    json_file, image_root = os.fspath(json_file), os.fspath(image_root)
    register_lazily(
        name,
        ("coco", json_file, image_root, domain),
        lambda: load_coco_json(json_file, image_root, name),
        dict(
            json_file=json_file,
            image_root=image_root,
            domain=domain or domain_from_name(name),
            evaluator_type="dg_coco",
        ),
        check=lambda: _check(json_file, image_root),
    )


def _check(json_file: str, image_root: str) -> None:
    require_file(json_file, "COCO json not found")
    require_dir(image_root, "COCO image folder not found")
