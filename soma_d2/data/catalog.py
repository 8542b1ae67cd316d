"""Generic data-catalog pieces every data set module shares: the format error, the default domain
of a data set name, and lazy registration that is idempotent for the same contents.

They are not about VOC or any format: the VOC, COCO, DWD, segmentation and command-line
registrations all use them, so they live here rather than in one format's module.
"""
from __future__ import annotations

import logging
import re

from detectron2.data import DatasetCatalog, MetadataCatalog

__all__ = [
    "DatasetFormatError",
    "domain_from_name",
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


def registration_key(name: str) -> tuple | None:
    """What `name` was registered with through `register_lazily` (None: unknown or elsewhere)."""
    return _REGISTERED.get(name) if name in DatasetCatalog.list() else None


def register_lazily(name: str, key: tuple, loader, metadata: dict) -> bool:
    """Register `loader` under `name` unless the same `key` is registered already.

    A different key replaces the previous registration (data set and metadata), which is how a
    user points a name at another root. Returns True when something was (re-)registered.
    """
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
