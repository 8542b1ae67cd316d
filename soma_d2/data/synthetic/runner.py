"""Writing the five domains, in forked worker processes when allowed; bytes never depend on it.
"""
from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Iterator
from typing import Any

from ..dwd import DWD_DOMAINS


def run_domains(write_timed, out_dir, images_per_domain: int, image_size: int, seed: int,
                 workers: int | None) -> Iterator[tuple[str, Any]]:
    """Run `write_timed` once per DWD domain, in forked workers when allowed.

    Yields (domain, result) as each domain finishes, so callers can print progress; arguments
    are checked before anything is written.
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
            yield from zip(DWD_DOMAINS, pool.imap(write_timed, jobs))
    else:
        yield from zip(DWD_DOMAINS, map(write_timed, jobs))
