"""The segmentation variant on disk: the same scenes as PNGs with Cityscapes train-id label maps.
"""
from __future__ import annotations

import os

import numpy as np

from ..dwd import DWD_CLASSES, DWD_SOURCE_DOMAIN
from ..seg_datasets import SYNTHETIC_SEG_LAYOUT
from ..seg_labels import CITYSCAPES_STUFF_CLASSES
from .render import render_scene_with_labels
from .runner import domain_generator
from .voc_writer import dwd_splits
from .weather import domain_textures


def _write_semseg_domain(out_dir: str, domain: str, domain_index: int, count: int, size: int,
                         seed: int) -> np.ndarray:
    ids = [f"{domain}_{i:05d}" for i in range(count)]
    splits = dwd_splits(ids, domain, domain_index, seed)
    split_of = {}
    for split, split_ids in splits.items():
        # the targets' whole-domain split is called "test" here (nothing trains on it)
        folder = split if domain == DWD_SOURCE_DOMAIN else "test"
        split_of.update(dict.fromkeys(split_ids, folder))
    pixels = np.zeros(256, np.int64)
    for i, image_id in enumerate(ids):
        rng = np.random.default_rng([seed, domain_index, i])
        image, _, label = render_scene_with_labels(rng, domain, size, DWD_CLASSES[i % 7],
                                                   domain_textures(seed, domain_index, size))
        fields = dict(domain=domain, split=split_of[image_id], id=image_id)
        image_path = os.path.join(out_dir, SYNTHETIC_SEG_LAYOUT["image"].format(**fields))
        label_path = os.path.join(out_dir, SYNTHETIC_SEG_LAYOUT["label"].format(**fields))
        for path in (image_path, label_path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
        image.save(image_path)
        label.save(label_path)
        pixels += np.bincount(np.asarray(label).ravel(), minlength=256)
    return pixels


def _class_pixels(pixels: np.ndarray) -> tuple[dict[str, int], str]:
    named = {name: int(pixels[i]) for i, name in enumerate(CITYSCAPES_STUFF_CLASSES) if pixels[i]}
    return named, f"{len(named)} classes"


generate_synthetic_semseg = domain_generator(
    _write_semseg_domain, _class_pixels, "synthetic seg", "generate_synthetic_semseg",
    doc="""Write the segmentation variant of the synthetic weather data under `out_dir`.

    The same scenes as `generate_synthetic_dwd` with the same arguments (same images before JPEG
    compression, same source split), as PNG images with per-pixel Cityscapes train-id labels
    (`SEG_TRAIN_IDS`), one Cityscapes-like tree per domain (`SYNTHETIC_SEG_LAYOUT`):
    `<domain>/leftImg8bit/<split>/<domain>/<id>_leftImg8bit.png` and
    `<domain>/gtFine/<split>/<domain>/<id>_gtFine_labelTrainIds.png`, split `train`/`test` for
    the source and `test` (all images) for each target. Returns the pixel count of every class
    name per domain. Register the result with `register_synthetic_semseg(out_dir)`.
    """,
)
