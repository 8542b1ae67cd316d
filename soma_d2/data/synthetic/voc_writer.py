"""The detection variant on disk in exactly the Diverse Weather (VOC2007) layout, with its splits.
"""
from __future__ import annotations

import os
from xml.sax.saxutils import escape

import numpy as np

from ..dwd import DWD_CLASSES, DWD_SOURCE_DOMAIN
from .render import render_scene
from .runner import domain_generator
from .scene_spec import JPEG_QUALITY, SOURCE_TRAIN_FRACTION, SceneObject
from .weather import domain_textures


def voc_xml(image_id: str, size: int, objects: list[SceneObject]) -> str:
    """A VOC XML with what Detectron2's evaluator re-parses: pose, truncated, difficult, int box."""
    parts = [
        "<annotation>",
        "  <folder>VOC2007</folder>",
        f"  <filename>{escape(image_id)}.jpg</filename>",
        f"  <size><width>{size}</width><height>{size}</height><depth>3</depth></size>",
        "  <segmented>0</segmented>",
    ]
    for o in objects:
        x0, y0, x1, y1 = o.box
        parts += [
            "  <object>",
            f"    <name>{o.name}</name>",
            "    <pose>Unspecified</pose>",
            f"    <truncated>{o.truncated}</truncated>",
            f"    <difficult>{o.difficult}</difficult>",
            f"    <bndbox><xmin>{x0 + 1}</xmin><ymin>{y0 + 1}</ymin>"
            f"<xmax>{x1 + 1}</xmax><ymax>{y1 + 1}</ymax></bndbox>",
            "  </object>",
        ]
    parts.append("</annotation>")
    return "\n".join(parts) + "\n"


def _write_domain(out_dir: str, domain: str, domain_index: int, count: int, size: int,
                  seed: int) -> dict[str, int]:
    voc = os.path.join(out_dir, domain, "VOC2007")
    for sub in ("Annotations", "JPEGImages", os.path.join("ImageSets", "Main")):
        os.makedirs(os.path.join(voc, sub), exist_ok=True)
    counts = dict.fromkeys(DWD_CLASSES, 0)
    ids = [f"{domain}_{i:05d}" for i in range(count)]
    for i, image_id in enumerate(ids):
        rng = np.random.default_rng([seed, domain_index, i])
        image, objects = render_scene(rng, domain, size, DWD_CLASSES[i % 7],
                                      domain_textures(seed, domain_index, size))
        image.save(os.path.join(voc, "JPEGImages", image_id + ".jpg"), quality=JPEG_QUALITY)
        with open(os.path.join(voc, "Annotations", image_id + ".xml"), "w") as f:
            f.write(voc_xml(image_id, size, objects))
        for o in objects:
            counts[o.name] += 1
    splits = dwd_splits(ids, domain, domain_index, seed)
    for split, split_ids in splits.items():
        with open(os.path.join(voc, "ImageSets", "Main", split + ".txt"), "w") as f:
            f.write("".join(i + "\n" for i in split_ids))
    return counts


def dwd_splits(ids: list[str], domain: str, domain_index: int, seed: int) -> dict[str, list[str]]:
    """DWD's splits: the source 70/30 into train/test, a target domain whole (under "train")."""
    if domain != DWD_SOURCE_DOMAIN:
        return {"train": ids}
    count = len(ids)
    order = np.random.default_rng([seed, domain_index, 10**9]).permutation(count)
    n_train = max(1, min(count - 1, round(count * SOURCE_TRAIN_FRACTION)))
    return {"train": sorted(ids[j] for j in order[:n_train]),
            "test": sorted(ids[j] for j in order[n_train:])}


def _object_counts(counts: dict[str, int]) -> tuple[dict[str, int], str]:
    return counts, f"{sum(counts.values())} objects"


generate_synthetic_dwd = domain_generator(
    _write_domain, _object_counts, "synthetic DWD", "generate_synthetic_dwd",
    doc="""Write the synthetic weather data set under `out_dir` in the Diverse Weather layout.

    `<out_dir>/<domain>/VOC2007/{Annotations,JPEGImages,ImageSets/Main}` for the five DWD
    domains; the source `daytime_clear` is split 70/30 into `train.txt`/`test.txt`, each target
    lists all its images in `train.txt`. Images are `image_size` squared JPEGs. Domains are
    written by `workers` forked processes (default: one per CPU core, at most 5; 1 = in this
    process); the bytes do not depend on it. Returns the object count per class for each domain.
    Register the result with `register_dwd(out_dir)`.
    """,
)
