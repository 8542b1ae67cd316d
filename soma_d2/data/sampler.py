"""Resuming a training data stream where the interrupted run left it.

Detectron2's `TrainingSampler` yields an infinite, seeded, per-rank stream of indices and restarts
it from the beginning on every run, so a resumed run sees the first images again instead of the
ones the interrupted run would have seen next. `ResumableSampler` wraps any such sampler and skips
the indices this rank already consumed (`start_iter * images_per_rank`); the skip is set after
`resume_or_load` knows `start_iter` and before the loader is first iterated, which is when the
sampler is actually read. `make_loader_resumable` installs it inside a loader built by
`build_detection_train_loader` (without rebuilding it) and gives each torch `DataLoader` inside
its own generator, so creating the loader's iterator does not draw from torch's global RNG, whose
state a resumed run restores from the checkpoint.

The continuation is exact with `DATALOADER.NUM_WORKERS 0` and either no aspect-ratio grouping or
images that fall into one aspect group; with several workers or mixed aspect groups the resumed
run continues at the right place in the index stream, but batch composition may differ slightly.
"""
from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from typing import Any

import torch
from detectron2.utils import comm
from torch.utils.data import DataLoader, Sampler

__all__ = ["ResumableSampler", "make_loader_resumable"]

logger = logging.getLogger(__name__)

_CHILD_ATTRS = ("dataset", "_dataset", "data_loader")


class ResumableSampler(Sampler):
    """Yields `inner`'s per-rank index stream without its first `skip` indices."""

    def __init__(self, inner: Sampler, loaders: list[DataLoader] | None = None):
        self.inner = inner
        self.skip = 0
        self._loaders = list(loaders or [])

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(iter(self.inner), self.skip, None)

    def __getstate__(self) -> dict[str, Any]:
        """What a loader worker receives: the index stream, not the loaders.

        The loaders are only needed in the training process (`set_start_iter` seeds their
        generators). Pickled into a spawned worker (Detectron2's `launch` spawns, so its loader
        workers are spawned too) a `DataLoader` drags its `torch.Generator` along, whose state
        `Generator.__reduce__` returns as a temporary tensor; that tensor is shared by file
        descriptor and freed before the worker starts, so the worker finds a reused fd and dies
        with "unable to resize file ... Invalid argument (22)".
        """
        state = self.__dict__.copy()
        state["_loaders"] = []
        return state

    def set_start_iter(self, start_iter: int, images_per_rank: int) -> None:
        """Skip what iterations `0 .. start_iter - 1` consumed; call before the first iteration."""
        if start_iter < 0 or images_per_rank <= 0:
            raise ValueError(
                f"set_start_iter(start_iter={start_iter}, images_per_rank={images_per_rank}): "
                "need start_iter >= 0 and images_per_rank > 0"
            )
        self.skip = int(start_iter) * int(images_per_rank)
        for loader in self._loaders:
            # worker seeds derive from this generator: they must differ between ranks, and a
            # resumed run must not replay the first iterations' worker RNG streams
            loader.generator.manual_seed(_generator_seed(self.seed, comm.get_rank(), start_iter))
        if self.skip:
            logger.info("Resuming the training data stream: skipping %d samples on this rank "
                        "(start_iter %d x %d images)", self.skip, start_iter, images_per_rank)

    @property
    def seed(self) -> int | None:
        """Seed of the wrapped sampler's shuffle (None when it has none)."""
        seed = getattr(self.inner, "_seed", None)
        return None if seed is None else int(seed)

    def state_dict(self) -> dict[str, Any]:
        """The shuffle seed, so that a run started with `SEED -1` resumes the same stream."""
        return {"seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        seed = state.get("seed")
        if seed is not None and hasattr(self.inner, "_seed") and seed != self.seed:
            logger.info("Using the checkpoint's sampler seed %d (was %s)", seed, self.seed)
            self.inner._seed = int(seed)


def _generator_seed(seed: int | None, rank: int, start_iter: int) -> int:
    return ((seed or 0) * 1_000_003 + rank * 7_919 + int(start_iter)) % (2**63 - 1)


def _walk(root: Any, max_depth: int = 8) -> Iterator[Any]:
    stack, seen = [(root, 0)], set()
    while stack:
        obj, depth = stack.pop()
        if id(obj) in seen or depth > max_depth:
            continue
        seen.add(id(obj))
        yield obj
        for attr in _CHILD_ATTRS:
            child = obj.__dict__.get(attr) if hasattr(obj, "__dict__") else None
            if child is not None:
                stack.append((child, depth + 1))


def make_loader_resumable(loader: Any) -> ResumableSampler | None:
    """Install a `ResumableSampler` inside a Detectron2 train loader; None if it has no sampler.

    Looks through the loader's wrappers (`AspectRatioGroupedDataset`, `MapDataset`, torch
    `DataLoader`) for Detectron2's `ToIterableDataset`, whose `sampler` it wraps, and gives every
    torch `DataLoader` without a generator a private one.
    """
    from detectron2.data.common import ToIterableDataset

    nodes = list(_walk(loader))
    targets = [n for n in nodes if isinstance(n, ToIterableDataset)]
    if len(targets) != 1:
        logger.warning(
            "The training loader (%s) holds %d index samplers; a resumed run will restart the "
            "data stream instead of continuing it", type(loader).__name__, len(targets))
        return None
    loaders = [n for n in nodes if isinstance(n, DataLoader)]
    for dl in loaders:
        if dl.generator is None:
            dl.generator = torch.Generator()
    target = targets[0]
    sampler = target.sampler
    if not isinstance(sampler, ResumableSampler):
        sampler = ResumableSampler(sampler, loaders)
        target.sampler = sampler
    sampler.set_start_iter(0, 1)
    return sampler
