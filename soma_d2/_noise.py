"""Filters for known, harmless third-party warnings, installed once when soma_d2 is imported.

Detectron2 0.7 on torch 2.14 warns about `torch.jit.script`, `torch.meshgrid` and timm's moved
layer paths on every start; they say nothing about the user's run and bury real warnings.
"""
from __future__ import annotations

import warnings

_MESSAGES = (
    r"`torch\.jit\.script` is deprecated",
    r"`torch\.jit\.script_method` is deprecated",
    r"torch\.meshgrid: in an upcoming release",
    r"Importing from timm\.models\.layers is deprecated",
    r"`torch\.cuda\.amp\.(GradScaler|autocast)\(args\.\.\.\)` is deprecated",
)


def silence_known_noise() -> None:
    """Ignore the warnings listed in `_MESSAGES` (matched on the start of their message)."""
    for message in _MESSAGES:
        warnings.filterwarnings("ignore", message=message)
