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
from detectron2.data import build_detection_train_loader
from detectron2.utils import comm
from torch.utils.data import Sampler

from ..compat import sampler_seed, set_sampler_seed, train_loader_generator

__all__ = ["ResumableSampler", "build_resumable_train_loader"]

logger = logging.getLogger(__name__)


class ResumableSampler(Sampler):
    """Yields `inner`'s per-rank index stream without its first `skip` indices."""

    def __init__(self, inner: Sampler, generators: list[torch.Generator] | None = None):
        self.inner = inner
        self.skip = 0
        self._generators = list(generators or [])

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(iter(self.inner), self.skip, None)

    def __getstate__(self) -> dict[str, Any]:
        """What a loader worker receives: the index stream, not the loaders' generators.

        The generators are only needed in the training process (`set_start_iter` seeds them).
        Pickled into a spawned worker (Detectron2's `launch` spawns, so its loader workers are
        spawned too) a `torch.Generator`'s state is a temporary tensor (`Generator.__reduce__`)
        that is shared by file descriptor and freed before the worker starts, so the worker finds
        a reused fd and dies with "unable to resize file ... Invalid argument (22)".
        """
        state = self.__dict__.copy()
        state["_generators"] = []
        return state

    def set_start_iter(self, start_iter: int, images_per_rank: int) -> None:
        """Skip what iterations `0 .. start_iter - 1` consumed; call before the first iteration."""
        if start_iter < 0 or images_per_rank <= 0:
            raise ValueError(
                f"set_start_iter(start_iter={start_iter}, images_per_rank={images_per_rank}): "
                "need start_iter >= 0 and images_per_rank > 0"
            )
        self.skip = int(start_iter) * int(images_per_rank)
        for generator in self._generators:
            # worker seeds derive from this generator: they must differ between ranks, and a
            # resumed run must not replay the first iterations' worker RNG streams
            generator.manual_seed(_generator_seed(self.seed, comm.get_rank(), start_iter))
        if self.skip:
            logger.info("Resuming the training data stream: skipping %d samples on this rank "
                        "(start_iter %d x %d images)", self.skip, start_iter, images_per_rank)

    @property
    def seed(self) -> int | None:
        """Seed of the wrapped sampler's shuffle (None when it has none)."""
        return sampler_seed(self.inner)

    def state_dict(self) -> dict[str, Any]:
        """The shuffle seed, so that a run started with `SEED -1` resumes the same stream."""
        return {"seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        seed = state.get("seed")
        if seed is not None and seed != self.seed:
            previous = self.seed
            if set_sampler_seed(self.inner, seed):
                logger.info("Using the checkpoint's sampler seed %d (was %s)", seed, previous)


def _generator_seed(seed: int | None, rank: int, start_iter: int) -> int:
    return ((seed or 0) * 1_000_003 + rank * 7_919 + int(start_iter)) % (2**63 - 1)


def build_resumable_train_loader(*, sampler: Sampler | None, **loader_kwargs: Any
                                 ) -> tuple[Any, ResumableSampler | None]:
    """`build_detection_train_loader(sampler=ResumableSampler(sampler), **loader_kwargs)`.

    Returns the loader and its `ResumableSampler` (None for an iterable data set, which has no
    sampler to wrap). The loader gets its own generator, reseeded by `set_start_iter`.
    """
    if sampler is None:
        return build_detection_train_loader(sampler=None, **loader_kwargs), None
    resumable = ResumableSampler(sampler)
    loader = build_detection_train_loader(sampler=resumable, seed=0, **loader_kwargs)
    generator = train_loader_generator(loader)
    if generator is not None:
        resumable._generators.append(generator)
    resumable.set_start_iter(0, 1)
    return loader, resumable
