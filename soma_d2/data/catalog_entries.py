"""Data sets from the command line: `DATASETS.REGISTER` entries and `--register-module` files.

Detectron2's `launch` starts one process per GPU, and each process has its own catalogs: a data
set registered in a user's launcher script is invisible to them. Registering from the config (or
from a file imported by every process) puts the registration where each process runs it, in
`soma_d2.engine.setup.setup_cfg`. Entries are parsed before anything is built, so a typo fails in
seconds with the entry and the expected form; registering a name twice with different contents
is refused (the same contents again are a no-op), because a silently replaced data set would make
a result describe data it was not computed on.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from detectron2.data import DatasetCatalog, MetadataCatalog

from .catalog import DatasetFormatError, registration_key
from .coco import register_coco_domain
from .dwd import DWD_CLASSES
from .seg_datasets import register_sem_seg_folder
from .voc import register_voc_domain

__all__ = [
    "ENTRY_FORMS",
    "DatasetEntry",
    "parse_dataset_entry",
    "parse_dataset_entries",
    "register_dataset_entries",
    "import_registration_modules",
    "check_class_counts",
]

ENTRY_FORMS = {
    "voc": "voc:NAME:ROOT:SPLIT[:CLASSES][:DOMAIN]",
    "coco": "coco:NAME:JSON:IMAGES[:DOMAIN]",
    "sem_seg": "sem_seg:NAME:IMAGES:LABELS[:DOMAIN]",
}
_FIELDS = {"voc": (4, 6), "coco": (4, 5), "sem_seg": (4, 5)}  # (required, max) incl. the kind


@dataclass(frozen=True)
class DatasetEntry:
    """One parsed `DATASETS.REGISTER` entry (paths as given, classes resolved)."""

    kind: str
    name: str
    paths: tuple[str, ...]
    classes: tuple[str, ...] = ()
    domain: str | None = None
    text: str = ""


def _forms() -> str:
    return "; ".join(ENTRY_FORMS.values())


def _classes(value: str, entry: str) -> tuple[str, ...]:
    """CLASSES: a `.txt` file with one class name per line, or comma-separated names."""
    if value.endswith(".txt"):
        if not os.path.isfile(value):
            raise ValueError(f"DATASETS.REGISTER entry {entry!r}: class file {value!r} not found")
        with open(value, encoding="utf-8") as f:
            names = tuple(line.strip() for line in f if line.strip())
    else:
        names = tuple(n.strip() for n in value.split(","))
    if not names or any(not n for n in names):
        raise ValueError(
            f"DATASETS.REGISTER entry {entry!r}: CLASSES {value!r} has an empty class name; "
            "give comma-separated names (car,person) or a .txt file with one name per line"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"DATASETS.REGISTER entry {entry!r}: CLASSES {value!r} repeats a name")
    return names


def parse_dataset_entry(text: str) -> DatasetEntry:
    """Parse one entry; a malformed one raises ValueError naming it and the expected form."""
    if not isinstance(text, str):
        raise ValueError(f"DATASETS.REGISTER entry {text!r} is not a string; forms: {_forms()}")
    parts = text.split(":")
    kind = parts[0]
    if kind not in ENTRY_FORMS:
        raise ValueError(
            f"DATASETS.REGISTER entry {text!r}: unknown kind {kind!r}; expected one of: {_forms()}"
        )
    low, high = _FIELDS[kind]
    if not low <= len(parts) <= high or any(not p for p in parts[:low]):
        raise ValueError(
            f"DATASETS.REGISTER entry {text!r}: expected {ENTRY_FORMS[kind]} "
            f"({len(parts)} ':'-separated fields given; a path must not contain ':')"
        )
    name, paths = parts[1], tuple(parts[2:low])
    optional = parts[low:] + [""] * (high - len(parts))
    classes: tuple[str, ...] = ()
    if kind == "voc":
        class_text = optional.pop(0)
        classes = _classes(class_text, text) if class_text else tuple(DWD_CLASSES)
    domain = optional[0] or None
    return DatasetEntry(kind, name, paths, classes, domain, text)


def parse_dataset_entries(entries: Sequence[str]) -> list[DatasetEntry]:
    """Parse every entry (all before any is registered); names must be unique among them."""
    parsed = [parse_dataset_entry(e) for e in entries]
    seen: dict[str, str] = {}
    for p in parsed:
        if p.name in seen and seen[p.name] != p.text:
            raise ValueError(
                f"DATASETS.REGISTER names {p.name!r} twice with different contents: "
                f"{seen[p.name]!r} and {p.text!r}"
            )
        seen[p.name] = p.text
    return parsed


def _key(entry: DatasetEntry) -> tuple:
    """The registration key `register_*` would store for `entry` (see voc.register_lazily)."""
    if entry.kind == "voc":
        return ("voc", entry.paths[0], entry.paths[1], entry.classes, entry.domain)
    if entry.kind == "coco":
        return ("coco", entry.paths[0], entry.paths[1], entry.domain)
    return ("sem_seg_folder", entry.paths[0], entry.paths[1], entry.domain)


def register_dataset_entries(entries: Sequence[str]) -> list[str]:
    """Register `DATASETS.REGISTER` entries lazily (nothing is read); returns their names.

    A name already in the catalog with other contents (another entry, a built-in data set, or
    one registered by a `--register-module` file) is refused with a ValueError.
    """
    parsed = parse_dataset_entries(entries)
    for entry in parsed:
        if entry.name in DatasetCatalog.list() and registration_key(entry.name) != _key(entry):
            raise ValueError(
                f"DATASETS.REGISTER entry {entry.text!r}: data set {entry.name!r} is already "
                "registered with different contents; choose another name"
            )
    for entry in parsed:
        if entry.kind == "voc":
            register_voc_domain(entry.name, entry.paths[0], entry.paths[1], entry.classes,
                                domain=entry.domain)
        elif entry.kind == "coco":
            register_coco_domain(entry.name, entry.paths[0], entry.paths[1], domain=entry.domain)
        else:
            register_sem_seg_folder(entry.name, entry.paths[0], entry.paths[1],
                                    domain=entry.domain)
    return [e.name for e in parsed]


def check_class_counts(cfg) -> None:
    """A Faster/Cascade R-CNN config must have as many classes as its data sets.

    With fewer, training fails deep in the loss; with more, it trains and the evaluation silently
    ignores the extra outputs. Checked for data sets whose classes are known without reading them
    (VOC domains; a COCO json's classes are only known once it is loaded).
    """
    if cfg.MODEL.META_ARCHITECTURE != "GeneralizedRCNN":
        return
    expected = int(cfg.MODEL.ROI_HEADS.NUM_CLASSES)
    for name in (*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST):
        if name not in MetadataCatalog.list():
            continue
        classes = MetadataCatalog.get(name).get("thing_classes", None)
        if classes is not None and len(classes) != expected:
            raise ValueError(
                f"data set {name!r} has {len(classes)} classes {list(classes)} but "
                f"MODEL.ROI_HEADS.NUM_CLASSES={expected}; set MODEL.ROI_HEADS.NUM_CLASSES "
                f"{len(classes)}"
            )


def import_registration_modules(paths: Sequence[str]) -> None:
    """Import each user file (`--register-module FILE.py`) once per process.

    The module is imported under a name derived from its absolute path, so importing it again
    in the same process (e.g. `launch` on one GPU, or tests) does not run its code twice.
    """
    for path in paths:
        full = os.path.abspath(path)
        if not os.path.isfile(full):
            raise DatasetFormatError(f"--register-module {path!r}: file not found")
        digest = hashlib.sha1(full.encode()).hexdigest()[:12]
        name = f"soma_d2_user_registration_{digest}"
        if name in sys.modules:
            continue
        spec = importlib.util.spec_from_file_location(name, full)
        if spec is None or spec.loader is None:
            raise DatasetFormatError(f"--register-module {path!r}: not an importable Python file")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
