"""Every private Detectron2 / fvcore name soma-d2 relies on, in one place.

Detectron2 has no stable API for a few things the recipe needs: a global-norm gradient clipper
(mmcv's `clip_grad`), an "incompatible keys" result for a load that bypasses `load_state_dict`,
a sampler's shuffle seed (to resume a `SEED -1` run), and the generator of the torch
`DataLoader` that `build_detection_train_loader` builds (to seed loader workers per rank and
resume point). Each is reached only through this module (one more, the evaluation hook's
`_do_eval` / `_eval_after_train` that `soma_d2.engine.eval_hook.SafeEvalHook` overrides, is
checked by the same tests), and `tests/test_compat.py` checks each
one against the installed versions, so an upgrade that changes them fails loudly there.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from detectron2.data.common import AspectRatioGroupedDataset
from detectron2.solver.build import _generate_optimizer_class_with_gradient_clipping
from fvcore.common.checkpoint import _IncompatibleKeys
from torch.utils.data import DataLoader

__all__ = [
    "IncompatibleKeys",
    "optimizer_class_with_global_clipping",
    "sampler_seed",
    "set_sampler_seed",
    "train_loader_generator",
]

IncompatibleKeys = _IncompatibleKeys


def optimizer_class_with_global_clipping(
    optimizer_type: type[torch.optim.Optimizer], clipper: Callable[[Any], Any]
) -> type[torch.optim.Optimizer]:
    """`optimizer_type` whose `step()` first calls `clipper(all parameters)` (total-norm clip)."""
    return _generate_optimizer_class_with_gradient_clipping(optimizer_type, global_clipper=clipper)


def sampler_seed(sampler: Any) -> int | None:
    """Shuffle seed of a Detectron2 training sampler (`_seed`), None when it has none."""
    seed = getattr(sampler, "_seed", None)
    return None if seed is None else int(seed)


def set_sampler_seed(sampler: Any, seed: int) -> bool:
    """Set a Detectron2 training sampler's shuffle seed; False when it has none to set."""
    if not hasattr(sampler, "_seed"):
        return False
    sampler._seed = int(seed)
    return True


def train_loader_generator(loader: Any) -> torch.Generator | None:
    """The `torch.Generator` of the DataLoader that `build_detection_train_loader` returned.

    It is the loader itself, or the `dataset` of the `AspectRatioGroupedDataset` wrapping it.
    """
    if isinstance(loader, AspectRatioGroupedDataset):
        loader = loader.dataset
    return loader.generator if isinstance(loader, DataLoader) else None
