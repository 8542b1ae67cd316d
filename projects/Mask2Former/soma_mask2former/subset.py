"""Train on a listed subset of a data set (the data-efficiency setting's Cityscapes 1/16 list).

The official config fine-tunes on the images an mmseg `ann_file` names (one image per line, e.g.
`aachen/aachen_000000_000019`, suffix optional). `restrict_to_subset` wraps the registered loaders
of the training sets so they keep only the listed images; a name that matches no image is an
error naming the list file, so a wrong list cannot silently train on fewer images. Matching is by
image stem (file name without extension and without the Cityscapes `_leftImg8bit` suffix).
"""
from __future__ import annotations

import os
from collections.abc import Sequence

from detectron2.data import DatasetCatalog

from soma_d2.data.catalog import DatasetFormatError

__all__ = ["read_subset_list", "restrict_to_subset"]

KEY = "MODEL.MASK2FORMER.TRAIN_SUBSET_LIST"


def _stem(path: str) -> str:
    stem = os.path.splitext(os.path.basename(path.strip()))[0]
    return stem.removesuffix("_leftImg8bit")


def read_subset_list(path: str) -> list[str]:
    """The image stems `path` lists (blank lines and `#` comments skipped)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{KEY}={path!r} does not exist")
    with open(path) as f:
        stems = [_stem(line) for line in f if line.strip() and not line.lstrip().startswith("#")]
    if not stems:
        raise DatasetFormatError(f"{KEY}={path!r} lists no image")
    return stems


def restrict_to_subset(names: Sequence[str], list_file: str) -> None:
    """Re-register each data set in `names` so that it loads only the images `list_file` names
    (every listed image must be found in one of them). Idempotent for the same list."""
    stems = read_subset_list(list_file)
    wanted = set(stems)
    found: dict[str, set[str]] = {}  # per data set, filled when it loads

    for name in names:
        base = DatasetCatalog[name]
        if getattr(base, "subset_list", None) == list_file:
            continue
        base = getattr(base, "full_loader", base)

        def load(base=base, name=name):
            kept = [d for d in base() if _stem(d["file_name"]) in wanted]
            found[name] = {_stem(d["file_name"]) for d in kept}
            if len(found) == len(names) and set().union(*found.values()) != wanted:
                missing = sorted(wanted - set().union(*found.values()))
                raise DatasetFormatError(
                    f"{KEY}={list_file!r}: {len(missing)} listed images are not in "
                    f"{list(names)} (e.g. {missing[:5]})"
                )
            return kept

        load.subset_list = list_file
        load.full_loader = base
        DatasetCatalog.remove(name)
        DatasetCatalog.register(name, load)
