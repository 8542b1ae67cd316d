"""Semantic-segmentation data sets for domain generalization, all in the 19 Cityscapes train ids.

The benchmark trains on synthetic street scenes (GTAV, SYNTHIA, UrbanSyn) and tests on real ones
(Cityscapes, BDD100K, Mapillary Vistas, ACDC). Each release encodes its labels differently, so
this module holds the id -> Cityscapes-train-id tables (`LabelMap`, used once by the preparation
scripts in `datasets/`) and registers every data set lazily, as the detection data sets are: no
file is read before `DatasetCatalog.get`, and a missing folder or label file raises a
`DatasetFormatError` naming the path and the script that would create it. Cityscapes itself goes
through Detectron2's `load_cityscapes_semantic`; the others share one image/label pairing loader.
The trees are documented in `datasets/README.md`.
"""
from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..utils import atomic_write
from .dwd import DWD_SOURCE_DOMAIN, dwd_dataset_names
from .voc import DatasetFormatError, register_lazily

__all__ = [
    "ACDC_CONDITIONS",
    "CITYSCAPES_COLORS",
    "CITYSCAPES_ID_TO_TRAIN_ID",
    "CITYSCAPES_STUFF_CLASSES",
    "IGNORE_LABEL",
    "LABEL_MAP_SPECS",
    "LabelMap",
    "MAPILLARY_ID_TO_TRAIN_ID",
    "SEG_DATASET_DOMAINS",
    "SYNTHETIC_SEG_LAYOUT",
    "SYNTHIA_ID_TO_TRAIN_ID",
    "convert_label_files",
    "default_seg_root",
    "default_synthetic_seg_root",
    "label_files_in",
    "load_cityscapes_sem_seg",
    "load_sem_seg_pairs",
    "make_label_map",
    "prepare_labels_cli",
    "read_label_png",
    "register_seg_datasets",
    "register_synthetic_semseg",
    "sem_seg_metadata",
    "synthetic_semseg_split",
]

logger = logging.getLogger(__name__)

IGNORE_LABEL = 255
CITYSCAPES_STUFF_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)
CITYSCAPES_COLORS = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
    (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
    (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
    (0, 80, 100), (0, 0, 230), (119, 11, 32),
)
# Cityscapes label ids (cityscapesScripts labels.py) -> train ids; GTAV uses the same label ids
CITYSCAPES_ID_TO_TRAIN_ID = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
    26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}
# SYNTHIA-RAND-CITYSCAPES class ids (0 void .. 22 lanemarking) -> train ids (as DAFormer/mmseg)
SYNTHIA_ID_TO_TRAIN_ID = {
    3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 16: 9, 1: 10, 10: 11, 17: 12, 8: 13,
    18: 14, 19: 15, 20: 16, 12: 17, 11: 18,
}
# Mapillary Vistas v1.2 (66 ids, config.json order) -> train ids (as HRDA/MIC's conversion)
MAPILLARY_ID_TO_TRAIN_ID = {
    13: 0, 24: 0, 41: 0,  # road, lane marking - general, manhole
    2: 1, 15: 1,  # curb, sidewalk
    17: 2, 6: 3, 3: 4,  # building, wall, fence
    45: 5, 47: 5,  # pole, utility pole
    48: 6, 50: 7, 30: 8, 29: 9, 27: 10, 19: 11,  # traffic light, sign (front), veg., terrain, sky
    20: 12, 21: 12, 22: 12,  # bicyclist, motorcyclist, other rider
    55: 13, 61: 14, 54: 15, 58: 16, 57: 17, 52: 18,  # car, truck, bus, on rails, motorcycle, bike
}
ACDC_CONDITIONS = ("fog", "night", "rain", "snow")


def default_seg_root() -> str:
    """`$DETECTRON2_DATASETS` (default `datasets`), where the segmentation data sets live."""
    return os.environ.get("DETECTRON2_DATASETS", "datasets")


def sem_seg_metadata(domain: str, **extra) -> dict:
    """Metadata every soma-d2 segmentation data set carries (what the evaluator and table read)."""
    return dict(
        stuff_classes=list(CITYSCAPES_STUFF_CLASSES),
        stuff_colors=[list(c) for c in CITYSCAPES_COLORS],
        ignore_label=IGNORE_LABEL,
        evaluator_type="dg_sem_seg",
        domain=domain,
        **extra,
    )


# ---- label conversion ------------------------------------------------------------------------


class LabelMap:
    """A release's label ids -> Cityscapes train ids, with unexpected ids counted, reported once.

    `known_ids` are the ids the release documents (mapped or deliberately ignored); any other id
    is also mapped to `ignore`, but counted (pixels and files) so that a wrong input (a colour
    label, a different release) is reported in one warning with the counts instead of silently
    producing an empty ground truth.
    """

    def __init__(self, name: str, mapping: Mapping[int, int], known_ids: Iterable[int],
                 ignore: int = IGNORE_LABEL):
        self.name = name
        self.mapping = dict(mapping)
        self.known = frozenset(int(i) for i in known_ids) | set(self.mapping)
        self.ignore = int(ignore)
        self.lut = np.full(65536, self.ignore, np.uint8)
        for src, dst in self.mapping.items():
            self.lut[src] = dst
        self._unknown_lut = np.ones(65536, bool)
        self._unknown_lut[list(self.known)] = False
        self.unexpected_pixels: Counter = Counter()
        self.unexpected_files: Counter = Counter()
        self.example: dict[int, str] = {}
        self.reported = False

    def apply(self, label: np.ndarray) -> tuple[np.ndarray, dict[int, int]]:
        """Converted uint8 label and `{unexpected id: pixel count}` (pure: nothing recorded)."""
        label = np.asarray(label)
        if label.dtype.kind not in "ui" or label.ndim != 2:
            raise ValueError(
                f"{self.name}: expected a 2-D integer label image, got {label.dtype} {label.shape}"
            )
        if label.size and (label.min() < 0 or label.max() > 65535):
            raise ValueError(f"{self.name}: label ids outside 0..65535")
        label = label.astype(np.int64, copy=False)
        counts = np.bincount(label.ravel(), minlength=1)
        ids = np.nonzero(counts)[0]
        unexpected = {int(i): int(counts[i]) for i in ids if self._unknown_lut[i]}
        return self.lut[label], unexpected

    def record(self, unexpected: Mapping[int, int], source: str) -> None:
        """Add one file's unexpected ids to the totals `report` prints."""
        for i, n in unexpected.items():
            self.unexpected_pixels[i] += n
            self.unexpected_files[i] += 1
            self.example.setdefault(i, source)

    def __call__(self, label: np.ndarray, source: str = "<label>") -> np.ndarray:
        converted, unexpected = self.apply(label)
        self.record(unexpected, source)
        return converted

    def summary(self) -> str | None:
        """The one-line report of unexpected ids, or None when there were none."""
        if not self.unexpected_pixels:
            return None
        parts = ", ".join(
            f"{i}: {self.unexpected_pixels[i]} px in {self.unexpected_files[i]} file(s), "
            f"e.g. {self.example[i]}"
            for i in sorted(self.unexpected_pixels)
        )
        return (
            f"{self.name}: label ids outside the documented set were mapped to {self.ignore} "
            f"(ignore): {parts}"
        )

    def report(self, log: logging.Logger | None = None) -> str | None:
        """Log `summary()` once (later calls return it without logging again)."""
        text = self.summary()
        if text and not self.reported:
            (log or logger).warning(text)
            self.reported = True
        return text


# release -> (display name, id -> train id, documented ids); UrbanSyn's `ss` maps hold train ids
# already, with 19 (and 255) marking void
LABEL_MAP_SPECS: dict[str, tuple[str, dict[int, int], tuple[int, ...]]] = {
    "gtav": ("GTAV", CITYSCAPES_ID_TO_TRAIN_ID, tuple(range(34))),
    "cityscapes": ("Cityscapes", CITYSCAPES_ID_TO_TRAIN_ID, tuple(range(34))),
    "synthia": ("SYNTHIA", SYNTHIA_ID_TO_TRAIN_ID, tuple(range(23))),
    "mapillary": ("Mapillary", MAPILLARY_ID_TO_TRAIN_ID, tuple(range(66))),
    "urbansyn": ("UrbanSyn", {i: i for i in range(19)}, (*range(20), 255)),
}


def make_label_map(release: str) -> LabelMap:
    """A fresh `LabelMap` (no counts yet) for one of `LABEL_MAP_SPECS`."""
    try:
        name, mapping, known = LABEL_MAP_SPECS[release]
    except KeyError as e:
        raise ValueError(
            f"no label map for {release!r}; known: {sorted(LABEL_MAP_SPECS)}"
        ) from e
    return LabelMap(name, mapping, known)


def read_label_png(path: str, channel: int | None = None) -> np.ndarray:
    """The integer ids of a label PNG: palette indices for mode "P" (GTAV, Mapillary), values for
    8/16-bit grey, or channel `channel` (RGB order) of a colour file, read with OpenCV because
    PIL reduces 16-bit colour PNGs (SYNTHIA) to 8 bits per channel; a grey file is returned as
    it is even when a channel is asked for."""
    from PIL import Image

    if channel is not None:
        try:
            import cv2
        except ImportError as e:
            raise DatasetFormatError(f"{path}: reading a colour label needs OpenCV (cv2)") from e
        arr = cv2.imread(path, cv2.IMREAD_UNCHANGED)
        if arr is None:
            raise DatasetFormatError(f"cannot read label image {path}")
        if arr.ndim == 2:
            return arr
        if channel >= arr.shape[2]:
            raise DatasetFormatError(f"{path}: has {arr.shape[2]} channel(s), no channel {channel}")
        return arr[..., 2 - channel] if channel < 3 <= arr.shape[2] else arr[..., channel]
    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L", "I", "I;16", "I;16B", "I;16L"):
                raise DatasetFormatError(
                    f"{path}: label image has mode {im.mode!r}; expected single-channel ids "
                    "(P, L or 16-bit)"
                )
            return np.array(im)
    except OSError as e:
        raise DatasetFormatError(f"cannot read label image {path}: {e}") from e


def _save_label(path: str, label: np.ndarray) -> None:
    from PIL import Image

    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    image = Image.fromarray(label.astype(np.uint8), mode="L")
    atomic_write(path, "wb", lambda f: image.save(f, format="PNG"))


_WORKER_STATE: dict = {}  # the label map and channel of a conversion, set once per process


def _init_worker(label_map: LabelMap, channel: int | None) -> None:
    _WORKER_STATE.update(label_map=label_map, channel=channel)


def _convert_one(job: tuple[str, str]) -> dict[int, int]:
    src, dst = job
    converted, unexpected = _WORKER_STATE["label_map"].apply(
        read_label_png(src, _WORKER_STATE["channel"])
    )
    _save_label(dst, converted)
    return unexpected


def convert_label_files(
    jobs: Sequence[tuple[str, str]],
    label_map: LabelMap,
    channel: int | None = None,
    workers: int = 1,
    progress: Callable[[str], None] | None = print,
    tag: str = "prepare",
) -> LabelMap:
    """Convert each `(source, destination)` label file with `label_map` (to 8-bit train-id PNGs).

    Prints a progress line about every 5 % (through `progress`), then the unexpected-id report once
    (through `progress`, or as a log warning when `progress` is None).
    `workers` > 1 converts in forked processes; the output does not depend on it.
    """
    total = len(jobs)
    if not total:
        raise DatasetFormatError(f"{label_map.name}: no label file to convert")
    start = time.perf_counter()
    every = max(1, total // 20)
    with contextlib.ExitStack() as stack:
        if workers > 1 and "fork" in mp.get_all_start_methods():
            pool = stack.enter_context(mp.get_context("fork").Pool(
                workers, initializer=_init_worker, initargs=(label_map, channel)))
            results = pool.imap(_convert_one, jobs, chunksize=16)
        else:
            _init_worker(label_map, channel)
            results = map(_convert_one, jobs)
        for k, ((src, _), unexpected) in enumerate(zip(jobs, results), start=1):
            label_map.record(unexpected, src)
            if progress and (k % every == 0 or k == total):
                progress(f"[{tag}] {k}/{total} label files converted "
                         f"({100 * k // total}%, {time.perf_counter() - start:.1f} s)")
    if progress is None:
        label_map.report()
    elif label_map.summary() and not label_map.reported:
        progress(f"[{tag}] WARNING {label_map.summary()}")
        label_map.reported = True
    return label_map


# ---- loaders ---------------------------------------------------------------------------------


def _walk(image_dir: str, suffix: str) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(image_dir):
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, image_dir)
        for name in sorted(filenames):
            if name.endswith(suffix):
                found.append(name if rel_dir == "." else os.path.join(rel_dir, name))
    return found


def load_sem_seg_pairs(
    image_dir: str,
    label_dir: str,
    image_suffix: str,
    label_for: Callable[[str], str],
    what: str,
    hint: str = "see datasets/README.md",
) -> list[dict]:
    """Dataset dicts pairing every `*image_suffix` file under `image_dir` (recursively) with
    `label_dir/label_for(relative path)`; a missing folder, no image, or a missing label file
    raises `DatasetFormatError` naming the path and `hint`. Height/width are not read here (the
    segmentation mapper reads them from the image header when it needs them)."""
    layout = "see datasets/README.md for the expected tree"
    if not os.path.isdir(image_dir):
        raise DatasetFormatError(f"{what}: image folder not found: {image_dir} ({layout})")
    if not os.path.isdir(label_dir):
        raise DatasetFormatError(f"{what}: label folder not found: {label_dir} ({hint})")
    images = _walk(image_dir, image_suffix)
    if not images:
        raise DatasetFormatError(f"{what}: no '*{image_suffix}' image under {image_dir} ({layout})")
    dicts, missing = [], []
    for rel in images:
        label = os.path.join(label_dir, label_for(rel))
        if not os.path.isfile(label):
            missing.append((rel, label))
            continue
        dicts.append({
            "file_name": os.path.join(image_dir, rel),
            "sem_seg_file_name": label,
            "image_id": rel[: -len(image_suffix)] if len(rel) > len(image_suffix) else rel,
        })
    if missing:
        rel, label = missing[0]
        raise DatasetFormatError(
            f"{what}: {len(missing)} of {len(images)} image(s) have no label file, e.g. {label} "
            f"for {os.path.join(image_dir, rel)} ({hint})"
        )
    return dicts


def _replace_suffix(old: str, new: str) -> Callable[[str], str]:
    return lambda rel: rel[: -len(old)] + new


def load_cityscapes_sem_seg(root: str, split: str) -> list[dict]:
    """Cityscapes `leftImg8bit/<split>` + `gtFine/<split>` through Detectron2's
    `load_cityscapes_semantic` (which reads `*_gtFine_labelTrainIds.png` and the polygon JSON for
    the image size); its assertions become `DatasetFormatError`s naming the path."""
    from detectron2.data.datasets.cityscapes import load_cityscapes_semantic

    image_dir = os.path.join(root, "leftImg8bit", split)
    gt_dir = os.path.join(root, "gtFine", split)
    hint = ("create *_gtFine_labelTrainIds.png with cityscapesScripts' "
            "preparation/createTrainIdLabelImgs.py; see datasets/README.md")
    for folder in (image_dir, gt_dir):
        if not os.path.isdir(folder):
            raise DatasetFormatError(
                f"Cityscapes: folder not found: {folder} (see datasets/README.md for the tree)"
            )
    try:
        dicts = load_cityscapes_semantic(image_dir, gt_dir)
    except (AssertionError, FileNotFoundError, KeyError, ValueError) as e:
        raise DatasetFormatError(f"Cityscapes {split} under {root}: {e} ({hint})") from e
    missing = [d["sem_seg_file_name"] for d in dicts if not os.path.isfile(d["sem_seg_file_name"])]
    if missing:
        raise DatasetFormatError(
            f"Cityscapes {split}: {len(missing)} of {len(dicts)} label file(s) missing, e.g. "
            f"{missing[0]} ({hint})"
        )
    return dicts


def _cityscapes(root: str, split: str) -> list[dict]:
    return load_cityscapes_sem_seg(os.path.join(root, "cityscapes"), split)


def _gtav(root: str) -> list[dict]:
    base = os.path.join(root, "gta")
    return load_sem_seg_pairs(
        os.path.join(base, "images"), os.path.join(base, "labels"), ".png",
        lambda rel: os.path.splitext(rel)[0] + "_labelTrainIds.png", "GTAV",
        hint=f"run python datasets/prepare_gtav.py --root {base}",
    )


def _synthia(root: str) -> list[dict]:
    base = os.path.join(root, "synthia")
    return load_sem_seg_pairs(
        os.path.join(base, "RGB"), os.path.join(base, "GT", "LABELS"), ".png",
        lambda rel: os.path.splitext(rel)[0] + "_labelTrainIds.png", "SYNTHIA",
        hint=f"run python datasets/prepare_synthia.py --root {base}",
    )


def _urbansyn_label(rel: str) -> str:
    head, name = os.path.split(os.path.splitext(rel)[0])
    if name.startswith("rgb"):
        name = "ss" + name[3:]
    return os.path.join(head, name + "_labelTrainIds.png")


def _urbansyn(root: str) -> list[dict]:
    base = os.path.join(root, "urbansyn")
    return load_sem_seg_pairs(
        os.path.join(base, "rgb"), os.path.join(base, "ss"), ".png", _urbansyn_label, "UrbanSyn",
        hint=f"run python datasets/prepare_urbansyn.py --root {base}",
    )


def _bdd(root: str, split: str) -> list[dict]:
    base = os.path.join(root, "bdd100k")
    current = os.path.join(base, "labels", "sem_seg", "masks", split)
    if os.path.isdir(current) or not os.path.isdir(os.path.join(base, "seg")):
        return load_sem_seg_pairs(
            os.path.join(base, "images", "10k", split), current, ".jpg",
            lambda rel: os.path.splitext(rel)[0] + ".png", f"BDD100K {split}",
        )
    return load_sem_seg_pairs(  # the first release: bdd100k/seg/{images,labels}
        os.path.join(base, "seg", "images", split), os.path.join(base, "seg", "labels", split),
        ".jpg", lambda rel: os.path.splitext(rel)[0] + "_train_id.png", f"BDD100K {split}",
    )


def _mapillary(root: str, split: str) -> list[dict]:
    base = os.path.join(root, "mapillary", split)
    return load_sem_seg_pairs(
        os.path.join(base, "images"), os.path.join(base, "labels_trainIds"), ".jpg",
        lambda rel: os.path.splitext(rel)[0] + ".png", f"Mapillary {split}",
        hint=f"run python datasets/prepare_mapillary.py --root {os.path.dirname(base)}",
    )


def _acdc(root: str, conditions: Sequence[str], split: str) -> list[dict]:
    base = os.path.join(root, "acdc")
    dicts = []
    for cond in conditions:
        dicts += load_sem_seg_pairs(
            os.path.join(base, "rgb_anon", cond, split), os.path.join(base, "gt", cond, split),
            "_rgb_anon.png", _replace_suffix("_rgb_anon.png", "_gt_labelTrainIds.png"),
            f"ACDC {cond} {split}",
        )
    return dicts


@dataclass(frozen=True)
class _Spec:
    domain: str
    load: Callable[[str], list[dict]]


def _specs() -> dict[str, _Spec]:
    specs = {
        "gtav_train": _Spec("gtav", _gtav),
        "synthia_train": _Spec("synthia", _synthia),
        "urbansyn_train": _Spec("urbansyn", _urbansyn),
    }
    for split in ("train", "val"):
        specs[f"cityscapes_{split}"] = _Spec("cityscapes", lambda r, s=split: _cityscapes(r, s))
        specs[f"bdd100k_{split}"] = _Spec("bdd100k", lambda r, s=split: _bdd(r, s))
        mapillary_split = "training" if split == "train" else "validation"
        specs[f"mapillary_{split}"] = _Spec(
            "mapillary", lambda r, s=mapillary_split: _mapillary(r, s)
        )
        for cond in ACDC_CONDITIONS:
            specs[f"acdc_{cond}_{split}"] = _Spec(
                f"acdc_{cond}", lambda r, c=cond, s=split: _acdc(r, [c], s)
            )
        specs[f"acdc_{split}"] = _Spec("acdc", lambda r, s=split: _acdc(r, ACDC_CONDITIONS, s))
    return specs


SEG_DATASET_DOMAINS = {name: spec.domain for name, spec in _specs().items()}


def register_seg_datasets(root: str | None = None) -> list[str]:
    """Register the segmentation data sets lazily under `root` (default `$DETECTRON2_DATASETS`).

    Names: `gtav_train`, `synthia_train`, `urbansyn_train` (sources, all images);
    `cityscapes_{train,val}`, `bdd100k_{train,val}`, `mapillary_{train,val}`,
    `acdc_{fog,night,rain,snow}_{train,val}` and `acdc_{train,val}` (all four conditions).
    Re-registering with the same root is a no-op; another root replaces the registrations.
    """
    root = os.fspath(root) if root is not None else default_seg_root()
    for name, spec in _specs().items():
        register_lazily(
            name,
            ("sem_seg", root, name),
            lambda spec=spec: spec.load(root),
            sem_seg_metadata(spec.domain, root=root),
        )
    return list(SEG_DATASET_DOMAINS)


# ---- the synthetic weather data, segmentation variant -------------------------------------------

SYNTHETIC_SEG_LAYOUT = {
    "image": os.path.join("{domain}", "leftImg8bit", "{split}", "{domain}", "{id}_leftImg8bit.png"),
    "label": os.path.join(
        "{domain}", "gtFine", "{split}", "{domain}", "{id}_gtFine_labelTrainIds.png"
    ),
}


def default_synthetic_seg_root() -> str:
    """`$DETECTRON2_DATASETS/synthetic_semseg` (`$DETECTRON2_DATASETS` defaults to `datasets`)."""
    return os.path.join(default_seg_root(), "synthetic_semseg")


def synthetic_semseg_split(name: str, domain: str) -> str:
    """Folder split of a synthetic seg data set: the source has train/test, targets only test."""
    if domain != DWD_SOURCE_DOMAIN:
        return "test"
    return "test" if name.endswith("_test") else "train"


def _synthetic_loader(root: str, domain: str, split: str):
    def load() -> list[dict]:
        return load_sem_seg_pairs(
            os.path.join(root, domain, "leftImg8bit", split),
            os.path.join(root, domain, "gtFine", split),
            "_leftImg8bit.png",
            _replace_suffix("_leftImg8bit.png", "_gtFine_labelTrainIds.png"),
            f"synthetic seg {domain} {split}",
            hint="write it with soma_d2.data.synthetic.generate_synthetic_semseg",
        )

    return load


def register_synthetic_semseg(root: str | None = None, prefix: str = "synseg") -> list[str]:
    """Register the synthetic weather segmentation data (`generate_synthetic_semseg`) lazily.

    Names follow the detection variant: `<prefix>_daytime_clear_train`,
    `<prefix>_daytime_clear_test` and `<prefix>_<target>` for the four target domains (all
    their images). Returns the names, source first.
    """
    root = os.fspath(root) if root is not None else default_synthetic_seg_root()
    names = dwd_dataset_names(prefix)
    for name, domain in names.items():
        split = synthetic_semseg_split(name, domain)
        register_lazily(
            name,
            ("synthetic_sem_seg", root, domain, split),
            _synthetic_loader(root, domain, split),
            sem_seg_metadata(domain, root=root, split=split),
        )
    return list(names)


# ---- command line of the preparation scripts (datasets/prepare_*.py) ---------------------------


def prepare_labels_cli(
    argv: Sequence[str] | None,
    *,
    release: str,
    default_folder: str,
    find_jobs: Callable[[str, bool], list[tuple[str, str]]],
    description: str,
    channel: int | None = None,
) -> int:
    """The shared command line of `datasets/prepare_*.py`: `--root`, `--workers`, `--overwrite`.

    `find_jobs(root, overwrite)` lists the (source, destination) label files; existing
    destinations are skipped unless `--overwrite`, so an interrupted run can be resumed.
    Returns the exit status (0 done, 1 bad input, with the reason on stderr).
    """
    import argparse
    import sys

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--root", default=os.path.join(default_seg_root(), default_folder),
                        help=f"the {release} folder (default: <datasets>/{default_folder})")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                        help="parallel processes (default: CPU cores, at most 8)")
    parser.add_argument("--overwrite", action="store_true",
                        help="convert again files whose output already exists")
    args = parser.parse_args(argv)
    tag = f"prepare_{release}"
    try:
        jobs = find_jobs(args.root, args.overwrite)
        if not jobs:
            print(f"[{tag}] nothing to do: every label under {args.root} is converted already "
                  "(--overwrite to redo)", flush=True)
            return 0
        print(f"[{tag}] converting {len(jobs)} label files under {args.root}", flush=True)
        convert_label_files(jobs, make_label_map(release), channel=channel,
                            workers=max(1, args.workers),
                            progress=lambda line: print(line, flush=True), tag=tag)
    except DatasetFormatError as e:
        print(f"[{tag}] error: {e}", file=sys.stderr, flush=True)
        return 1
    return 0


def label_files_in(folder: str, exclude_suffix: str = "_labelTrainIds.png") -> list[str]:
    """Sorted `*.png` names in `folder` (not those ending with `exclude_suffix`); a missing folder
    raises `DatasetFormatError`."""
    if not os.path.isdir(folder):
        raise DatasetFormatError(f"label folder not found: {folder} (see datasets/README.md)")
    return sorted(n for n in os.listdir(folder)
                  if n.endswith(".png") and not n.endswith(exclude_suffix))
