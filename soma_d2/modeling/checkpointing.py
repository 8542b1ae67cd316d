"""Activation checkpointing for stacks of layers (ViT blocks, transformer encoder layers).

A checkpointed layer keeps only its input during the forward pass and recomputes its activations
in the backward pass (`torch.utils.checkpoint`, non-reentrant), trading about one extra forward of
that layer for the memory of its intermediate activations; losses and gradients are unchanged.
Stacks choose which layers to checkpoint by count from their first trainable layer, the way
upstream Co-DINO's encoder `with_cp` counts layers from the first: layers that run without a graph
(frozen ViT blocks under `torch.no_grad`) store no activations, so checkpointing them would only
cost time. One helper for every stack, so that each ViT family and head shares the same rule.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ["checkpoint_call", "checkpointed_range", "resolve_checkpoint_count"]


def resolve_checkpoint_count(count: int, available: int, key: str = "checkpoint count") -> int:
    """Number of layers to checkpoint among `available` trainable ones: `count` itself, or all of
    them for -1. Anything else below -1 or above `available` is an error naming `key`."""
    if isinstance(count, bool):
        count = -1 if count else 0
    if int(count) != count or not -1 <= int(count) <= available:
        raise ValueError(
            f"{key}={count!r} must be an integer in [-1, {available}]: 0 = off, N = the first N "
            f"of the {available} trainable layers, -1 = all of them"
        )
    return available if int(count) == -1 else int(count)


def checkpointed_range(first: int, count: int) -> range:
    """Indices of the `count` layers checkpointed from `first` on (the first trainable layer)."""
    return range(int(first), int(first) + int(count))


def checkpoint_call(module: nn.Module, *args: Any, enabled: bool = True, **kwargs: Any) -> Any:
    """`module(*args, **kwargs)`, through `torch.utils.checkpoint` (non-reentrant, RNG state
    preserved) when `enabled`, the module is training and autograd records a graph; a plain call
    otherwise, so evaluation and `torch.no_grad` pay nothing."""
    if enabled and module.training and torch.is_grad_enabled():
        return checkpoint(module, *args, use_reentrant=False, **kwargs)
    return module(*args, **kwargs)
