"""Writing the five domains, in forked worker processes when allowed; bytes never depend on it.

`domain_generator` builds the public `generate_synthetic_*` functions: the variants share their
arguments, checks, process pool and progress lines, and differ only in how one domain is written
and summarised.
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


def domain_generator(write: Callable, summarize: Callable[[Any], tuple[dict[str, int], str]],
                     tag: str, name: str, doc: str) -> Callable[..., dict[str, dict[str, int]]]:
    """The public generator of one data-set variant: `write` writes a domain (see `run_domains`),
    `summarize` turns its result into the domain's entry of the returned summary and the words of
    its progress line, printed as `[tag] <domain>: ...`.

    One function body serves every variant, so their arguments, defaults and progress output
    cannot drift apart; `name` and `doc` make the result read as a function of the writer module.
    """

    def generate(
        out_dir: str,
        images_per_domain: int = 200,
        image_size: int = 320,
        seed: int = 0,
        progress: bool = True,
        workers: int | None = None,
    ) -> dict[str, dict[str, int]]:
        summary = {}
        results = run_domains(write, out_dir, images_per_domain, image_size, seed, workers)
        for domain, (result, seconds) in results:
            summary[domain], what = summarize(result)
            if progress:
                print(f"[{tag}] {domain}: {images_per_domain} images, {what}, {seconds:.1f} s",
                      flush=True)
        return summary

    generate.__name__ = generate.__qualname__ = name
    generate.__module__ = write.__module__
    generate.__doc__ = doc
    return generate
