"""Writing the five domains, in forked worker processes when allowed; bytes never depend on it.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import time
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

from ..dwd import DWD_DOMAINS


def _timed(write: Callable, args: tuple) -> tuple[Any, float]:
    start = time.perf_counter()
    return write(*args), time.perf_counter() - start


def run_domains(write: Callable, out_dir, images_per_domain: int, image_size: int, seed: int,
                workers: int | None) -> Iterator[tuple[str, tuple[Any, float]]]:
    """Run `write(out_dir, domain, index, count, size, seed)` once per DWD domain, in forked
    workers when allowed.

    Yields (domain, (result, seconds)) as each domain finishes, so callers can print progress;
    arguments are checked before anything is written.
    """
    if images_per_domain < 2:
        raise ValueError(f"images_per_domain must be >= 2 (got {images_per_domain})")
    if image_size < 64:
        raise ValueError(f"image_size must be >= 64 pixels (got {image_size})")
    out_dir = os.fspath(out_dir)
    jobs = [
        (out_dir, domain, k, images_per_domain, image_size, seed)
        for k, domain in enumerate(DWD_DOMAINS)
    ]
    if workers is None:
        workers = min(len(jobs), os.cpu_count() or 1)
    if "fork" not in mp.get_all_start_methods():
        workers = 1  # spawned workers would re-import Detectron2: slower than writing in-process
    if workers > 1:
        with mp.get_context("fork").Pool(workers) as pool:
            yield from zip(DWD_DOMAINS, pool.imap(partial(_timed, write), jobs))
    else:
        yield from zip(DWD_DOMAINS, map(partial(_timed, write), jobs))
