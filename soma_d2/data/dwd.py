"""Diverse Weather (DWD) benchmark: domain names, class order, folder discovery, registration.

The benchmark's protocol: train on `daytime_clear` (its `train` split), test on its `test` split,
and evaluate each unseen target domain on ALL its images, which the release lists in the target's
`train.txt`. Copies found in the wild spell the domain folders differently (`Night-Sunny`,
`daytime_foggy`, `Daytime-Foggy`), so folders are matched case-insensitively with `-`/`_`
interchangeable; the expected tree is documented in `datasets/README.md`.
"""
from __future__ import annotations

import os

from .catalog import DatasetFormatError, register_lazily
from .voc import check_voc_folder, load_voc_domain

__all__ = [
    "DWD_CLASSES",
    "DWD_DOMAINS",
    "DWD_SOURCE_DOMAIN",
    "default_dwd_root",
    "dwd_dataset_names",
    "find_domain_dir",
    "register_dwd",
]

DWD_CLASSES = ("bus", "bike", "car", "motor", "person", "rider", "truck")
# source first, then the targets in the order the benchmark's tables use
DWD_DOMAINS = ("daytime_clear", "night_sunny", "dusk_rainy", "night_rainy", "daytime_foggy")
DWD_SOURCE_DOMAIN = DWD_DOMAINS[0]


def default_dwd_root() -> str:
    """`$DETECTRON2_DATASETS/diverseWeather` (`$DETECTRON2_DATASETS` defaults to `datasets`)."""
    return os.path.join(os.environ.get("DETECTRON2_DATASETS", "datasets"), "diverseWeather")


def _normalize(name: str) -> str:
    return name.strip().lower().replace("-", "_").replace(" ", "_")


def find_domain_dir(root: str, domain: str, must_exist: bool = True) -> str:
    """The VOC folder of `domain` under `root` (`<root>/<Domain-Spelling>/VOC2007`).

    Accepts any folder spelling equal to `domain` up to case and `-`/`_`. A domain folder that
    directly holds `Annotations/` (no `VOC2007` level) is accepted too. With `must_exist=False`
    a missing folder yields the canonical path instead of an error.
    """
    wanted = _normalize(domain)
    domain_dir = os.path.join(root, domain)
    if os.path.isdir(root):
        matches = sorted(e for e in os.listdir(root) if _normalize(e) == wanted)
        if len(matches) > 1:
            raise DatasetFormatError(
                f"{root}: several folders match the domain {domain!r}: {matches}"
            )
        if matches:
            domain_dir = os.path.join(root, matches[0])
    voc_dir = os.path.join(domain_dir, "VOC2007")
    if os.path.isdir(voc_dir) or not os.path.isdir(os.path.join(domain_dir, "Annotations")):
        if must_exist and not os.path.isdir(voc_dir):
            raise DatasetFormatError(
                f"Diverse Weather domain {domain!r} not found: expected {voc_dir} "
                "(see datasets/README.md for the layout)"
            )
        return voc_dir
    return domain_dir


def dwd_dataset_names(prefix: str = "dwd") -> dict[str, str]:
    """Registered name -> domain for the benchmark: source train/test, then each target."""
    source = DWD_SOURCE_DOMAIN
    names = {f"{prefix}_{source}_train": source, f"{prefix}_{source}_test": source}
    names.update({f"{prefix}_{d}": d for d in DWD_DOMAINS[1:]})
    return names


def _split_of(name: str) -> str:
    # target domains use the whole domain, which the release lists in its train.txt
    return "test" if name.endswith("_test") else "train"


def _loader(root: str, domain: str, split: str):
    return lambda: load_voc_domain(find_domain_dir(root, domain), split, DWD_CLASSES)


def _check(root: str, domain: str, split: str):
    return lambda: check_voc_folder(find_domain_dir(root, domain), split)


def register_dwd(root: str | None = None, prefix: str = "dwd") -> list[str]:
    """Register the Diverse Weather data sets lazily; returns their names (source first).

    Names: `<prefix>_daytime_clear_train`, `<prefix>_daytime_clear_test` and `<prefix>_<target>`
    for each target domain (all its images). Calling it again with the same root is a no-op; a
    different root replaces the registrations. Only the root folder is listed here (to resolve
    folder spellings for the metadata `dirname`); annotations are read on first use.
    """
    root = os.fspath(root) if root is not None else default_dwd_root()
    names = dwd_dataset_names(prefix)
    for name, domain in names.items():
        split = _split_of(name)
        register_lazily(
            name,
            ("dwd", root, domain, split),
            _loader(root, domain, split),
            dict(
                thing_classes=list(DWD_CLASSES),
                dirname=find_domain_dir(root, domain, must_exist=False),
                split=split,
                year=2007,
                domain=domain,
                domain_order=DWD_DOMAINS.index(domain),  # benchmark column order in DG tables
                evaluator_type="dg_voc",
            ),
            check=_check(root, domain, split),
        )
    return list(names)
