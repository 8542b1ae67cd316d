"""Adapter-only checkpoints of whole detectors/segmenters, and merging them into plain weights.

A full checkpoint repeats the frozen foundation model (residuals) in every run. The adapter file
keeps only what training changed: SoMA factors and trainable biases/tokens (through the core's
`adapter_state_dict`, which also fingerprints the residual it was trained against), trainable
non-SoMA backbone parameters, and every parameter and buffer outside the ViT (pyramid, heads), plus
the config. Rebuilding from the ORIGINAL foundation weights and this file gives the trained model
exactly: the residual is recomputed by the same decomposition, never taken as W.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..soma import SoMALinear, adapter_state_dict, load_adapter_state_dict, merge_soma
from ..utils import unwrap_model

__all__ = [
    "ADAPTER_FORMAT",
    "export_adapter",
    "load_adapter",
    "is_adapter_checkpoint",
    "merged_state_dict",
]

ADAPTER_FORMAT = "soma-d2-adapter/1"
_NET = "backbone.net."


def _vit(model: nn.Module) -> nn.Module:
    model = unwrap_model(model)
    try:
        return model.backbone.net
    except AttributeError as e:
        raise TypeError(
            f"{type(model).__name__} has no backbone.net (the ViT); adapter files are defined for "
            "models built with build_soma_vit_backbone"
        ) from e


def export_adapter(model: nn.Module, cfg_yaml: str = "") -> dict[str, Any]:
    """What differs from the foundation weights, as a `torch.load(weights_only=True)`-safe dict."""
    model = unwrap_model(model)
    vit = _vit(model)
    has_soma = any(isinstance(m, SoMALinear) for m in vit.modules())
    soma_state = adapter_state_dict(vit) if has_soma else None
    rest = {k: v.detach().cpu() for k, v in model.state_dict().items() if not k.startswith(_NET)}
    if soma_state is None:  # full fine-tuning / frozen: trainable ViT parameters as they are
        for name, param in vit.named_parameters():
            if param.requires_grad:
                rest[_NET + name] = param.detach().cpu()
    return {
        "format": ADAPTER_FORMAT,
        "soma": soma_state,
        "model": rest,
        "config": cfg_yaml,
    }


def is_adapter_checkpoint(state: Any) -> bool:
    """True for dicts written by `export_adapter`."""
    return isinstance(state, dict) and state.get("format") == ADAPTER_FORMAT


def load_adapter(model: nn.Module, state: dict[str, Any]) -> None:
    """Load an adapter file into a model freshly built from the original foundation weights."""
    if not is_adapter_checkpoint(state):
        raise ValueError(
            f"not a soma-d2 adapter file (format {state.get('format') if isinstance(state, dict) else type(state)}); "
            f"expected format {ADAPTER_FORMAT!r}"
        )
    model = unwrap_model(model)
    vit = _vit(model)
    if state["soma"] is not None:
        load_adapter_state_dict(vit, state["soma"])
    incompatible = model.load_state_dict(state["model"], strict=False)
    bad_missing = [k for k in incompatible.missing_keys if not k.startswith(_NET)]
    if bad_missing or incompatible.unexpected_keys:
        raise ValueError(
            "adapter file does not match the model built from this config: missing "
            f"{bad_missing[:8]}, unexpected {incompatible.unexpected_keys[:8]}"
        )


def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """State dict of `model` with every SoMA layer merged into a plain Linear (no adapter keys)."""
    model = unwrap_model(model)
    merge_soma(_vit(model))
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}
