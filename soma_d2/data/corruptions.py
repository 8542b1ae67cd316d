"""Common image corruptions of any test set (Michaelis et al. 2019: COCO-C, Pascal-C, Cityscapes-C).

The robustness protocol corrupts every test image with the 15 "benchmark" corruptions of the
`imagecorruptions` package at severities 1-5. Two things make the numbers reproducible here: each
(image, corruption, severity) gets its own seed, a stable hash of the file's base name, the
corruption and the severity (never Python's salted `hash`), so every run, process and loader worker
draws the same corrupted pixels; and the corrupted image reaches the model through a lossless PNG
read back by the unchanged test mapper, which is also exactly what `write_corrupted_copies`
stores. Corrupting on the fly and evaluating stored copies therefore feed the model identical
tensors, whatever mapper `INPUT.DATASET_MAPPER_NAME` selects (`CorruptingMapper` wraps it; the
wrapped mapper reads the PNG in its own `INPUT.FORMAT`).

Stored copies keep the test set's layout: `<root>/<dataset>/<corruption>/<severity>/<path of the
image relative to the data set's image folder, as .png>`, listed in `<root>/corrupted_manifest.json`
and registered as `<dataset>-<corruption>-<severity>` with the source's annotations and metadata.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Sequence

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from ..utils import atomic_write, atomic_write_text
from .robust_mapper import read_image_file

__all__ = [
    "BENCHMARK",
    "CorruptingMapper",
    "corrupted_image",
    "corrupted_name",
    "corruption_names",
    "corruption_seed",
    "load_corrupted_manifest",
    "register_corrupted_copies",
    "resolve_corruptions",
    "resolve_severities",
    "write_corrupted_copies",
]

logger = logging.getLogger(__name__)

BENCHMARK = "benchmark"  # the standard 15 corruptions (noise, blur, weather, digital)
SEVERITIES = (1, 2, 3, 4, 5)
MANIFEST_NAME = "corrupted_manifest.json"


def corruption_names(subset: str = "all") -> list[str]:
    """Corruption names of `imagecorruptions`: "common" (the benchmark's 15) or "all" (+4 held-out)."""
    from imagecorruptions import get_corruption_names

    return list(get_corruption_names(subset))


def resolve_corruptions(names: Sequence[str]) -> list[str]:
    """The corruption list a config names ("benchmark" expands to the 15), unknown names refused."""
    valid = corruption_names("all")
    out: list[str] = []
    for name in names:
        expanded = corruption_names("common") if name == BENCHMARK else [name]
        for n in expanded:
            if n not in valid:
                raise ValueError(
                    f"DATASETS.TEST_CORRUPTIONS: unknown corruption {n!r}; valid: "
                    f"{[BENCHMARK] + valid}"
                )
            if n not in out:
                out.append(n)
    return out


def resolve_severities(severities: Sequence) -> list[int]:
    """Severities as sorted unique ints in 1-5; anything else refused with the valid values."""
    values = list(severities)
    if not values or any(isinstance(s, bool) or int(s) != s or s not in SEVERITIES
                         for s in values):
        raise ValueError(
            f"DATASETS.TEST_CORRUPTION_SEVERITIES={tuple(values)} must be a non-empty subset of "
            f"{SEVERITIES}"
        )
    return sorted({int(s) for s in values})


def corruption_seed(file_name: str, corruption: str, severity: int) -> int:
    """32-bit seed of one (image, corruption, severity): SHA-256 of base name, corruption, severity.

    The base name (not the full path) keeps the seed when a data set is moved or copied.
    """
    key = f"{os.path.basename(file_name)}|{corruption}|{int(severity)}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:4], "little")


def corrupted_image(file_name: str, corruption: str, severity: int) -> np.ndarray:
    """The RGB uint8 image of `file_name` under `corruption` at `severity`, deterministically.

    numpy's global generator (which most corruptions draw from) is seeded with `corruption_seed`
    and restored afterwards; corruptions with a `seed` argument (glass blur, impulse noise) get it
    explicitly because they would otherwise draw from a fresh, unseeded generator.
    """
    from imagecorruptions import corrupt, corruption_dict

    image = read_image_file(file_name, "RGB")
    seed = corruption_seed(file_name, corruption, severity)
    kwargs = {"seed": seed} if "seed" in inspect.signature(corruption_dict[corruption]).parameters \
        else {}
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        out = corrupt(np.ascontiguousarray(image), severity=int(severity),
                      corruption_name=corruption, **kwargs)
    except AttributeError as e:  # imagecorruptions reports bad input (e.g. < 32 px) this way
        raise ValueError(f"cannot apply {corruption} to {file_name}: {e}") from e
    finally:
        np.random.set_state(state)
    if out.shape != image.shape:
        raise ValueError(f"{corruption} changed the shape of {file_name}: {image.shape} -> "
                         f"{out.shape}")
    return out


def _save_png(image: np.ndarray, path: str, atomic: bool = True) -> None:
    """Lossless RGB PNG (fast compression); `atomic` for stored copies, not for temporary ones."""
    def write(f) -> None:
        Image.fromarray(image).save(f, format="PNG", compress_level=1)  # HxWx3 uint8: RGB

    if atomic:
        atomic_write(path, "wb", write)
    else:
        with open(path, "wb") as f:
            write(f)


class CorruptingMapper:
    """Wrap a test mapper: the image it reads is the corrupted one (see the module doc).

    The record's `file_name` is pointed at a temporary lossless PNG of the corrupted image for the
    duration of the call and restored in the output, so evaluators keyed on file names still find
    their ground truth.
    """

    def __init__(self, mapper: Callable[[dict], dict | None], corruption: str, severity: int):
        self.mapper = mapper
        self.corruption = corruption
        self.severity = int(severity)

    def __call__(self, dataset_dict: dict) -> dict | None:
        source = dataset_dict["file_name"]
        image = corrupted_image(source, self.corruption, self.severity)
        fd, tmp = tempfile.mkstemp(prefix="soma_corrupt_", suffix=".png")
        os.close(fd)
        try:
            _save_png(image, tmp, atomic=False)
            out = self.mapper({**dataset_dict, "file_name": tmp})
        finally:
            os.remove(tmp)
        if out is not None:
            out["file_name"] = source
        return out


def corrupted_name(dataset_name: str, corruption: str, severity: int) -> str:
    """Registered name of a stored corrupted copy, e.g. `dwd_night_sunny-fog-3`."""
    return f"{dataset_name}-{corruption}-{int(severity)}"


def _copy_paths(dataset_name: str, dicts: Sequence[dict], root: str, corruption: str,
                severity: int) -> dict[str, str]:
    """{source file: copy path relative to `root`} in the source's layout, extension .png.

    Paths are taken relative to the data set's root folder (metadata `dirname` / `image_root`,
    e.g. VOC's `JPEGImages/x.jpg` -> `<dataset>/<corruption>/<severity>/JPEGImages/x.png`), else to
    the deepest folder holding every image."""
    files = list(dict.fromkeys(d["file_name"] for d in dicts))
    if not files:
        raise ValueError(f"data set {dataset_name!r} has no images to corrupt")
    base = os.path.commonpath([os.path.dirname(os.path.abspath(f)) for f in files])
    meta = MetadataCatalog.get(dataset_name)
    for key in ("dirname", "image_root"):  # the data set's root, when it holds every image
        root_dir = meta.get(key, None)
        if isinstance(root_dir, str) and root_dir and os.path.commonpath(
                [os.path.abspath(root_dir), base]) == os.path.abspath(root_dir):
            base = os.path.abspath(root_dir)
            break
    out: dict[str, str] = {}
    seen: dict[str, str] = {}
    for f in files:
        rel = os.path.splitext(os.path.relpath(os.path.abspath(f), base))[0] + ".png"
        path = os.path.join(dataset_name, corruption, str(int(severity)), rel)
        if path in seen:
            raise ValueError(f"{f} and {seen[path]} would both be stored as {path}")
        seen[path] = f
        out[f] = path
    return out


def load_corrupted_manifest(root: str) -> dict:
    """The manifest of `root` ({"entries": [...]}), empty when none has been written yet."""
    path = os.path.join(root, MANIFEST_NAME)
    if not os.path.exists(path):
        return {"entries": []}
    with open(path) as f:
        data = json.load(f)
    if not isinstance(data, dict) or not isinstance(data.get("entries"), list):
        raise ValueError(f"{path} is not a corrupted-copies manifest (no 'entries' list)")
    return data


def write_corrupted_copies(
    dataset_name: str,
    corruptions: Sequence[str],
    severities: Sequence[int],
    root: str,
    overwrite: bool = False,
) -> list[str]:
    """Store corrupted copies of a registered data set under `root` and register them.

    Complete (dataset, corruption, severity) entries already in the manifest are kept unless
    `overwrite`; an entry enters the manifest only after all its images are written, so an
    interrupted run resumes where it stopped. Returns the derived data set names.
    """
    corruptions = resolve_corruptions(corruptions)
    severities = resolve_severities(severities)
    dicts = DatasetCatalog.get(dataset_name)
    os.makedirs(root, exist_ok=True)
    names = []
    total = len(corruptions) * len(severities)
    start, done = time.perf_counter(), 0
    for corruption in corruptions:
        for severity in severities:
            manifest = load_corrupted_manifest(root)
            key = (dataset_name, corruption, severity)
            entries = [e for e in manifest["entries"]
                       if (e["source"], e["corruption"], e["severity"]) != key]
            present = len(entries) != len(manifest["entries"])
            if present and not overwrite:
                logger.info("%s: already stored, kept", corrupted_name(*key))
            else:
                files = _copy_paths(dataset_name, dicts, root, corruption, severity)
                for source, rel in files.items():
                    path = os.path.join(root, rel)
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    _save_png(corrupted_image(source, corruption, severity), path)
                entries.append({"source": dataset_name, "corruption": corruption,
                                "severity": severity, "name": corrupted_name(*key),
                                "files": files})
                atomic_write_text(json.dumps({"entries": entries}, indent=1) + "\n",
                                  os.path.join(root, MANIFEST_NAME))
            done += 1
            elapsed = time.perf_counter() - start
            logger.info("corrupted copies of %s: %s severity %d done (%d/%d, %.0f s, ETA %.0f s)",
                        dataset_name, corruption, severity, done, total, elapsed,
                        elapsed / done * (total - done))
            names.append(corrupted_name(*key))
    register_corrupted_copies(root)
    return names


def _register_entry(root: str, entry: dict) -> None:
    name, source = entry["name"], entry["source"]
    files = {k: os.path.join(root, v) for k, v in entry["files"].items()}

    def load() -> list[dict]:
        out = []
        for d in DatasetCatalog.get(source):
            if d["file_name"] not in files:
                raise ValueError(f"{d['file_name']} of {source!r} has no corrupted copy in {root}; "
                                 "rerun tools/make_corrupted.py --overwrite")
            out.append({**d, "file_name": files[d["file_name"]]})
        return out

    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, load)
    meta = {k: v for k, v in MetadataCatalog.get(source).as_dict().items() if k != "name"}
    MetadataCatalog.get(name).set(**meta, corruption=entry["corruption"],
                                  severity=entry["severity"], corruption_source=source)


def register_corrupted_copies(root: str) -> dict[tuple[str, str, int], str]:
    """Register every stored copy listed in `root`'s manifest; {(source, corruption, severity):
    derived name}. Sources must be registered already (their records are reused lazily)."""
    out = {}
    for entry in load_corrupted_manifest(root)["entries"]:
        if entry["source"] not in DatasetCatalog.list():
            logger.warning("%s: source data set %r is not registered; copy not registered",
                           entry["name"], entry["source"])
            continue
        _register_entry(root, entry)
        out[(entry["source"], entry["corruption"], int(entry["severity"]))] = entry["name"]
    return out
