"""A stand-in for the one PEFT helper the official SoRA wrapper imports.

``rein/peft/sora.py`` imports ``peft.utils.integrations.gather_params_ctx`` and uses it around
the SVD initialisation. Outside DeepSpeed ZeRO-3 that helper is a context manager that does
nothing, so the side environment does not need PEFT (and transformers, accelerate, ...) for it:
:func:`install` registers ``peft``, ``peft.utils`` and ``peft.utils.integrations`` modules holding
just that no-op, unless a real PEFT is importable.
"""
from __future__ import annotations

import contextlib
import importlib.util
import sys
import types

__all__ = ["install"]


@contextlib.contextmanager
def gather_params_ctx(param, modifier_rank: int = 0, fwd_module=None):
    """PEFT's ``gather_params_ctx`` without DeepSpeed ZeRO-3: nothing to gather."""
    yield


def install() -> None:
    """Register the stand-in unless the real ``peft`` package is installed."""
    if "peft" in sys.modules or importlib.util.find_spec("peft") is not None:
        return
    names = ("peft", "peft.utils", "peft.utils.integrations")
    modules = {name: types.ModuleType(name, __doc__) for name in names}
    modules["peft.utils.integrations"].gather_params_ctx = gather_params_ctx
    modules["peft"].utils = modules["peft.utils"]
    modules["peft.utils"].integrations = modules["peft.utils.integrations"]
    for name, module in modules.items():
        module.__standin__ = True
        sys.modules[name] = module
