"""Random-number-generator states as a checkpointable, so a resumed run draws what the original would.

Augmentations (numpy, python `random` in the main process with `DATALOADER.NUM_WORKERS 0`), the
RPN/ROI sampling, drop-path and dropout (torch) all draw from global generators. Detectron2 seeds
them once at start-up, so a run resumed from iteration k would replay the draws of iteration 0.
`RNGState` is registered with the checkpointer: its state is saved with every checkpoint and
restored by `resume_or_load`. States are plain ints and tensors so `torch.load(weights_only=True)`
reads them. Evaluation in the middle of training runs inside `preserved_rng()`, so whether a run
evaluated at some iteration does not change the draws of the iterations after it.
"""
from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from detectron2.utils import comm

__all__ = ["RNGState", "capture_rng", "preserved_rng", "restore_rng"]

logger = logging.getLogger(__name__)


def capture_rng() -> dict[str, Any]:
    """The states of python `random`, numpy's legacy global RNG, torch CPU (and CUDA, if any)."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": {"version": int(version), "state": torch.tensor(internal, dtype=torch.int64),
                   "gauss": gauss},
        "numpy": {"name": str(name), "keys": torch.from_numpy(keys.astype(np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of `capture_rng`."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss"]))
    nps = state["numpy"]
    np.random.set_state((nps["name"], nps["keys"].numpy().astype(np.uint32), nps["pos"],
                         nps["has_gauss"], nps["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Run a block (e.g. evaluation) without changing any global RNG state afterwards."""
    state = capture_rng()
    try:
        yield
    finally:
        restore_rng(state)


class RNGState:
    """Checkpointable view of this process's global RNG states.

    Only the main process writes checkpoints, so a checkpoint holds rank 0's states. Other ranks
    cannot get their own back; they re-seed from `fallback_seed`, the rank and the iteration, so
    they at least do not replay their first iterations' draws.
    """

    def __init__(self, fallback_seed: int = 0, iteration: Callable[[], int] | None = None):
        self.fallback_seed = int(fallback_seed)
        self._iteration = iteration

    def state_dict(self) -> dict[str, Any]:
        it = int(self._iteration()) if self._iteration is not None else 0
        return {"rank": comm.get_rank(), "iteration": it, "states": capture_rng()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        rank = comm.get_rank()
        if int(state.get("rank", 0)) == rank:
            restore_rng(state["states"])
            return
        from detectron2.utils.env import seed_all_rng

        seed = (self.fallback_seed * 1_000_003 + rank * 7919 + int(state.get("iteration", 0)))
        seed %= 2**31
        logger.info("RNG states in the checkpoint belong to rank %s; rank %d re-seeds with %d",
                    state.get("rank"), rank, seed)
        seed_all_rng(seed)
