"""Per-layer work spread over threads, each running torch single-threaded.

Building 96 SoMA layers is a few hundred small and medium torch operations per layer (a float64
pass over the weight, products of r-column factors). With torch's own intra-op threads every one
of them ends in a barrier of all threads; on a machine whose cores other processes also use, a
descheduled thread stalls each barrier, and the build took 7x (layer pass) to 40x (fingerprints)
longer with 2 threads than with 1 under a load of 12 on 2 cores. Independent layers on
independent threads, each with one intra-op thread, use the same cores without any barrier.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch

__all__ = ["map_single_threaded", "torch_threads"]

T = TypeVar("T")
R = TypeVar("R")


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """torch's intra-op thread count set to `count` inside the block, restored after it."""
    previous = torch.get_num_threads()
    if count != previous:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)


def map_single_threaded(fn: Callable[[T], R], items: Iterable[T],
                        workers: int | None = None) -> list[R]:
    """``[fn(x) for x in items]`` on ``workers`` threads (default: torch's thread count), each
    torch operation single-threaded; results in input order, the first exception re-raised.

    `fn` must not depend on the order calls run in (no global RNG draws).
    """
    items = list(items)
    workers = max(1, torch.get_num_threads() if workers is None else workers)
    with torch_threads(1):
        if workers == 1 or len(items) <= 1:
            return [fn(x) for x in items]
        with ThreadPoolExecutor(max_workers=min(workers, len(items))) as pool:
            return list(pool.map(fn, items))
