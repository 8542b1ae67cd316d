"""Label ids of every segmentation release, mapped to the 19 Cityscapes train ids.

Each release encodes its labels differently (GTAV and Cityscapes label ids, SYNTHIA's own ids in a
16-bit channel, Mapillary Vistas v1.2 by label name, UrbanSyn already in train ids), so this module
holds the tables, the `LabelMap` that applies one (counting and reporting unexpected ids once), the
label-file reader, and the parallel conversion the `datasets/prepare_*.py` scripts run once.
"""
from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np

from ..utils import atomic_write
from .catalog import DatasetFormatError

__all__ = [
    "convert_label_files",
    "make_label_map",
    "mapillary_name_to_train_id",
    "read_label_png",
    "ACDC_CONDITIONS",
    "CITYSCAPES_COLORS",
    "CITYSCAPES_ID_TO_TRAIN_ID",
    "CITYSCAPES_STUFF_CLASSES",
    "IGNORE_LABEL",
    "LABEL_MAP_SPECS",
    "LabelMap",
    "MAPILLARY_ID_TO_TRAIN_ID",
    "MAPILLARY_V12_NAMES",
    "SYNTHIA_ID_TO_TRAIN_ID",
    "UnexpectedLabelIds",
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
# Mapillary Vistas v1.2 readable label names, in config_v1.2.json order (ids 0..65)
MAPILLARY_V12_NAMES = (
    "Bird", "Ground Animal", "Curb", "Fence", "Guard Rail", "Barrier", "Wall", "Bike Lane",
    "Crosswalk - Plain", "Curb Cut", "Parking", "Pedestrian Area", "Rail Track", "Road",
    "Service Lane", "Sidewalk", "Bridge", "Building", "Tunnel", "Person", "Bicyclist",
    "Motorcyclist", "Other Rider", "Lane Marking - Crosswalk", "Lane Marking - General",
    "Mountain", "Sand", "Sky", "Snow", "Terrain", "Vegetation", "Water", "Banner", "Bench",
    "Bike Rack", "Billboard", "Catch Basin", "CCTV Camera", "Fire Hydrant", "Junction Box",
    "Mailbox", "Manhole", "Phone Booth", "Pothole", "Street Light", "Pole", "Traffic Sign Frame",
    "Utility Pole", "Traffic Light", "Traffic Sign (Back)", "Traffic Sign (Front)", "Trash Can",
    "Bicycle", "Boat", "Bus", "Car", "Caravan", "Motorcycle", "On Rails", "Other Vehicle",
    "Trailer", "Truck", "Wheeled Slow", "Car Mount", "Ego Vehicle", "Unlabeled",
)


def mapillary_name_to_train_id(name: str) -> int:
    """The official SoMA conversion (tools/convert_datasets/mapillary2cityscape.py) of one
    Mapillary label name: lower-cased without spaces and hyphens, then, in this order, an exact
    Cityscapes class name; trafficsign/front/back -> traffic sign; onrail -> train; cyclist/rider
    -> rider; pole/streetlight -> pole; curb/pedestrianarea -> sidewalk; crosswalkplain/parking/
    bikelane/servicelane/lanemarking -> road; anything else -> ignore."""
    key = name.lower().replace(" ", "").replace("-", "")
    classes = {c.replace(" ", ""): i for i, c in enumerate(CITYSCAPES_STUFF_CLASSES)}
    if key in classes:
        return classes[key]
    rules = (
        (("trafficsign", "front", "back"), "traffic sign"),
        (("onrail",), "train"),
        (("cyclist", "rider"), "rider"),
        (("pole", "streetlight"), "pole"),
        (("curb", "pedestrianarea"), "sidewalk"),
        (("crosswalkplain", "parking", "bikelane", "servicelane", "lanemarking"), "road"),
    )
    for words, cls in rules:
        if any(w in key for w in words):
            return CITYSCAPES_STUFF_CLASSES.index(cls)
    return IGNORE_LABEL


# Mapillary Vistas v1.2 ids -> train ids by label name, as the official conversion
MAPILLARY_ID_TO_TRAIN_ID = {
    i: t for i, n in enumerate(MAPILLARY_V12_NAMES)
    if (t := mapillary_name_to_train_id(n)) != IGNORE_LABEL
}
ACDC_CONDITIONS = ("fog", "night", "rain", "snow")


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


class UnexpectedLabelIds:
    """Label ids outside `0..num_classes-1` (other than the ignore label) become the ignore label,
    counted per id (pixels, files, an example file) so that they can be reported once.

    The training mapper and the evaluator both meet labels that were not converted to train ids;
    neither may crash (the loss) or corrupt (the confusion matrix) on them, and both say so once,
    with the counts, through this one rule.
    """

    def __init__(self, num_classes: int, ignore_label: int = IGNORE_LABEL):
        self.num_classes, self.ignore_label = int(num_classes), int(ignore_label)
        self.pixels: Counter = Counter()
        self.files: Counter = Counter()
        self.example: dict[int, str] = {}

    def apply(self, label, source: str):
        """`label` (numpy array or torch tensor) with unexpected ids set to ignore; counts them."""
        bad = ((label < 0) | (label >= self.num_classes)) & (label != self.ignore_label)
        if not bad.any():
            return label
        ids, counts = np.unique(np.asarray(label[bad]), return_counts=True)
        for i, n in zip(ids.tolist(), counts.tolist()):
            self.pixels[i] += n
            self.files[i] += 1
            self.example.setdefault(i, source)
        if isinstance(label, np.ndarray):
            label = label.copy()
            label[bad] = self.ignore_label
            return label
        return label.masked_fill(bad, self.ignore_label)

    def merge(self, other: UnexpectedLabelIds) -> None:
        """Add another counter's findings (e.g. gathered from other processes)."""
        self.pixels.update(other.pixels)
        self.files.update(other.files)
        for k, v in other.example.items():
            self.example.setdefault(k, v)

    def summary(self) -> str:
        """`"<id>: <px> px in <n> file(s), e.g. <file>, ..."`; empty when nothing was found."""
        return ", ".join(f"{i}: {self.pixels[i]} px in {self.files[i]} file(s), "
                         f"e.g. {self.example[i]}" for i in sorted(self.pixels))
