"""The shared command line of `datasets/prepare_*.py`: `--root`, `--workers`, `--overwrite`.

It belongs to the preparation scripts, not to the library: they import it from this folder (a
script's own folder is on `sys.path` when it runs).
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from soma_d2.data.catalog import DatasetFormatError
from soma_d2.data.seg_datasets import default_seg_root
from soma_d2.data.seg_labels import convert_label_files, make_label_map


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


def pending(jobs: list[tuple[str, str]], overwrite: bool) -> list[tuple[str, str]]:
    """The (source, destination) jobs whose destination is missing, or all with `overwrite`: what
    lets an interrupted run resume where it stopped."""
    return [(s, d) for s, d in jobs if overwrite or not os.path.exists(d)]


def train_ids_beside(*subfolder: str) -> Callable[[str, bool], list[tuple[str, str]]]:
    """`find_jobs` for a release that keeps its `<id>.png` labels in `<root>/<subfolder>` and
    gets the converted `<id>_labelTrainIds.png` beside each (GTAV, SYNTHIA, UrbanSyn)."""

    def find_jobs(root: str, overwrite: bool) -> list[tuple[str, str]]:
        labels = os.path.join(root, *subfolder)
        jobs = [(os.path.join(labels, n), os.path.join(labels, n[:-4] + "_labelTrainIds.png"))
                for n in label_files_in(labels)]
        return pending(jobs, overwrite)

    return find_jobs


def label_files_in(folder: str, exclude_suffix: str = "_labelTrainIds.png") -> list[str]:
    """Sorted `*.png` names in `folder` (not those ending with `exclude_suffix`); a missing folder
    raises `DatasetFormatError`."""
    if not os.path.isdir(folder):
        raise DatasetFormatError(f"label folder not found: {folder} (see datasets/README.md)")
    return sorted(n for n in os.listdir(folder)
                  if n.endswith(".png") and not n.endswith(exclude_suffix))
