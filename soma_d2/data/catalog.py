"""Generic data-catalog pieces every data set module shares: the format error, the default domain
of a data set name, lazy registration that is idempotent for the same contents, and the check
that the data sets a run names exist before anything is built.

Registration reads nothing (a large annotation file would slow every start-up), so a missing root
used to surface only when the loader first ran: after the model was built and decomposed (about
two minutes for ViT-L). Each lazy registration therefore carries a cheap `check` (do the folders
and split files exist?) that `check_datasets_exist` runs for every `DATASETS.TRAIN` / `TEST`
entry first, with the message the loader would give.

They are not about VOC or any format: the VOC, COCO, DWD, segmentation and command-line
registrations all use them, so they live here rather than in one format's module.
"""
from __future__ import annotations

import difflib
import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog

__all__ = [
    "DatasetFormatError",
    "check_datasets_exist",
    "domain_from_name",
    "require_dir",
    "require_file",
    "register_lazily",
    "registration_key",
]

logger = logging.getLogger(__name__)

_SPLIT_SUFFIX = re.compile(r"_(train|val|trainval|test|minival|valminusminival)$")


class DatasetFormatError(ValueError):
    """A data set file is missing or malformed; the message names the file (and line)."""


def domain_from_name(name: str) -> str:
    """Default domain of a data set: its name without a trailing split (`foo_test` -> `foo`)."""
    return _SPLIT_SUFFIX.sub("", name)


_REGISTERED: dict[str, tuple] = {}
_CHECKS: dict[str, Callable[[], None]] = {}


def require_dir(path: str, what: str = "missing folder") -> None:
    """DatasetFormatError `"<what>: <path>"` unless `path` is a folder."""
    if not os.path.isdir(path):
        raise DatasetFormatError(f"{what}: {path}")


def require_file(path: str, what: str = "missing file") -> None:
    """DatasetFormatError `"<what>: <path>"` unless `path` is a file."""
    if not os.path.isfile(path):
        raise DatasetFormatError(f"{what}: {path}")


def registration_key(name: str) -> tuple | None:
    """What `name` was registered with through `register_lazily` (None: unknown or elsewhere)."""
    return _REGISTERED.get(name) if name in DatasetCatalog.list() else None


def register_lazily(name: str, key: tuple, loader, metadata: dict,
                    check: Callable[[], None] | None = None) -> bool:
    """Register `loader` under `name` unless the same `key` is registered already.

    A different key replaces the previous registration (data set and metadata), which is how a
    user points a name at another root. `check()` raises a `DatasetFormatError` naming the missing
    path when the folders or split files `loader` needs are absent, without reading them
    (`check_datasets_exist`). Returns True when something was (re-)registered.
    """
    if check is not None:
        _CHECKS[name] = check
    else:
        _CHECKS.pop(name, None)
    if name in DatasetCatalog.list() and _REGISTERED.get(name) == key:
        return False
    if name in DatasetCatalog.list():
        logger.info("Replacing the registration of data set %s", name)
        DatasetCatalog.remove(name)
    if name in MetadataCatalog.list():
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, loader)
    MetadataCatalog.get(name).set(**metadata)
    _REGISTERED[name] = key
    return True


def check_datasets_exist(names: Mapping[str, Sequence[str]]) -> None:
    """Fail before any model is built when a named data set is unregistered or its files are gone.

    `names`: {config key: data set names}, e.g. {"DATASETS.TRAIN": cfg.DATASETS.TRAIN}. Every
    problem is reported in one `DatasetFormatError`, each line naming the key, the data set and
    the missing path (or close registered names, for a typo). Data sets registered other than
    through `register_lazily` (a user's own `DatasetCatalog.register`) are only checked to be
    registered: their loader is the only thing that knows their files.
    """
    registered = DatasetCatalog.list()
    problems = []
    for key, datasets in names.items():
        for name in datasets:
            if name not in registered:
                close = difflib.get_close_matches(name, registered, n=3, cutoff=0.6)
                hint = f"; did you mean {', '.join(map(repr, close))}?" if close else (
                    "; register it with DATASETS.REGISTER or --register-module")
                problems.append(f"{key}: data set {name!r} is not registered{hint}")
                continue
            check = _CHECKS.get(name) if registration_key(name) is not None else None
            if check is None:
                continue
            try:
                check()
            except (DatasetFormatError, OSError) as e:
                problems.append(f"{key}: data set {name!r}: {e}")
    if problems:
        raise DatasetFormatError(
            "data sets named by the config are missing (checked before building the model):\n  "
            + "\n  ".join(problems))
