"""Adapter-only checkpoints: the trained factors, trainable extras, config and base fingerprints.

An adapter state is small (no frozen residual) and is loaded into a model freshly built from the
ORIGINAL pretrained weights and ``inject_soma``-ed with the same config: that model recomputes the
same residual ``W - s B0 A0`` (``B0 A0`` is unique up to sign when singular values are distinct),
then receives the trained factors. Merging trained factors onto the original ``W`` instead would be
off by ``s B0 A0``, which is why the state refuses to load onto anything but an injected model with
a matching config and matching fingerprints (Frobenius norm and a fixed bilinear probe) of the
pretrained ``W`` and of the initial product ``s B0 A0``. The dict contains only tensors, str, int,
float, bool, list, dict and None, so ``torch.load(..., weights_only=True)`` reads it.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .config import SoMAConfig
from .inject import find_soma_config
from .layer import SoMALinear

FORMAT = "soma-adapter"
VERSION = 1
BASE_RTOL = 1e-5
INIT_RTOL = 1e-3


def _soma_layers(model: nn.Module) -> dict[str, SoMALinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, SoMALinear)}


def _factor_names(layers: dict[str, SoMALinear]) -> set[str]:
    return {f"{n}.{k}" if n else k for n in layers for k in ("A", "B")}


def adapter_state_dict(model: nn.Module) -> dict[str, Any]:
    """Small, self-describing state of an injected model's adapters (CPU tensor copies).

    Holds the config (plain dict), per layer ``A``, ``B``, rank, scaling, init mode and the
    fingerprints of the base ``W`` and of ``s B0 A0``, and every other trainable parameter (the
    adapted biases, ``extra_trainable`` parameters) under ``"trainable"``.
    """
    config = find_soma_config(model)
    layers = _soma_layers(model)
    if config is None or not layers:
        raise ValueError(
            "adapter_state_dict: the model has no SoMA adapters; call inject_soma first"
        )
    out_layers = {}
    for name, layer in layers.items():
        out_layers[name] = {
            "A": layer.A.detach().cpu().clone(),
            "B": layer.B.detach().cpu().clone(),
            "shape": [layer.out_features, layer.in_features],
            "rank": layer.rank,
            "scaling": layer.scaling,
            "init": layer.init,
            "base_fingerprint": None if layer.base_fingerprint is None
            else list(layer.base_fingerprint),
            "init_fingerprint": None if layer.init_fingerprint is None
            else list(layer.init_fingerprint),
        }
    factors = _factor_names(layers)
    trainable = {n: p.detach().cpu().clone() for n, p in model.named_parameters()
                 if p.requires_grad and n not in factors}
    return {"format": FORMAT, "version": VERSION, "config": config.to_dict(),
            "layers": out_layers, "trainable": trainable}


def _compare_config(saved: dict[str, Any], current: SoMAConfig) -> None:
    try:
        mine = current.to_dict()
    except TypeError as exc:
        raise ValueError(f"load_adapter_state_dict: cannot compare configs: {exc}") from None
    saved_cfg = SoMAConfig.from_dict(saved).to_dict()
    diff = [f"{k}: saved {saved_cfg[k]!r} vs model {mine[k]!r}" for k in mine
            if saved_cfg[k] != mine[k]]
    if diff:
        raise ValueError("load_adapter_state_dict: the adapter state was made with another SoMA "
                         "config; inject the model with SoMAConfig.from_dict(state['config']). "
                         "Differences: " + "; ".join(diff))


def _check_fingerprints(name: str, layer: SoMALinear, entry: dict[str, Any]) -> None:
    saved_base, saved_init = entry.get("base_fingerprint"), entry.get("init_fingerprint")
    if saved_base is None or layer.base_fingerprint is None:
        raise ValueError(
            f"load_adapter_state_dict: layer '{name}' has no base fingerprint (it was not built "
            "by inject_soma/from_linear); pass check_base=False to load without verification"
        )
    base_norm = layer.base_fingerprint[0]
    tol = BASE_RTOL * max(base_norm, 1e-30)
    if any(abs(a - b) > tol for a, b in zip(saved_base, layer.base_fingerprint, strict=True)):
        raise ValueError(
            f"load_adapter_state_dict: layer '{name}' was decomposed from a different pretrained "
            f"weight (fingerprint saved {saved_base} vs model {layer.base_fingerprint}); build the "
            "model from the same pretrained weights the adapter was trained on"
        )
    if saved_init is None or layer.init_fingerprint is None:
        if (saved_init is None) != (layer.init_fingerprint is None):
            raise ValueError(
                f"load_adapter_state_dict: layer '{name}': initial-product fingerprint present on "
                "only one side (different init modes?)"
            )
        return
    tol = INIT_RTOL * layer.init_fingerprint[0] + BASE_RTOL * base_norm
    if any(abs(a - b) > tol for a, b in zip(saved_init, layer.init_fingerprint, strict=True)):
        raise ValueError(
            f"load_adapter_state_dict: layer '{name}': the initial adapter product s*B0@A0 differs "
            f"(saved {saved_init} vs model {layer.init_fingerprint}), so the frozen residuals "
            "differ; was the model decomposed from other weights or with another init?"
        )


def load_adapter_state_dict(model: nn.Module, state: dict[str, Any],
                            check_base: bool = True) -> None:
    """Load an :func:`adapter_state_dict` into a model injected with the same config.

    Everything is checked before anything is written: format, config, layer names, shapes and
    (with ``check_base``) the fingerprints of each layer's base weight and initial product.
    Raises ValueError naming the mismatch.
    """
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        got = sorted(map(str, state))[:8] if isinstance(state, dict) else type(state).__name__
        raise ValueError("load_adapter_state_dict: not a SoMA adapter state (missing "
                         f"format={FORMAT!r}); got {got}")
    if state.get("version") != VERSION:
        raise ValueError(f"load_adapter_state_dict: unsupported version {state.get('version')!r} "
                         f"(this code reads version {VERSION})")
    layers = _soma_layers(model)
    config = find_soma_config(model)
    if config is None or not layers:
        raise ValueError("load_adapter_state_dict: the model has no SoMA adapters. Build it from "
                         "the original pretrained weights, then inject_soma(model, "
                         "SoMAConfig.from_dict(state['config'])) before loading")
    _compare_config(state["config"], config)
    saved_layers: dict[str, dict[str, Any]] = state["layers"]
    missing = sorted(set(layers) - set(saved_layers))
    extra = sorted(set(saved_layers) - set(layers))
    if missing or extra:
        raise ValueError(f"load_adapter_state_dict: adapted layers differ; in the model only: "
                         f"{missing[:8]}, in the state only: {extra[:8]}")
    for name, entry in saved_layers.items():
        layer = layers[name]
        if layer.merged:
            raise ValueError(f"load_adapter_state_dict: layer '{name}' is merged; unmerge first")
        for key in ("A", "B"):
            mine, theirs = tuple(getattr(layer, key).shape), tuple(entry[key].shape)
            if mine != theirs:
                raise ValueError(f"load_adapter_state_dict: layer '{name}'.{key} has shape "
                                 f"{theirs} in the state but {mine} in the model")
        if abs(entry["scaling"] - layer.scaling) > 1e-12 or entry["init"] != layer.init:
            raise ValueError(f"load_adapter_state_dict: layer '{name}': saved scaling/init "
                             f"{entry['scaling']}/{entry['init']} vs model "
                             f"{layer.scaling}/{layer.init}")
        if check_base:
            _check_fingerprints(name, layer, entry)
    params = dict(model.named_parameters())
    for name, tensor in state["trainable"].items():
        if name not in params:
            raise ValueError(f"load_adapter_state_dict: trainable parameter '{name}' from the "
                             "state does not exist in the model")
        if tuple(params[name].shape) != tuple(tensor.shape):
            raise ValueError(f"load_adapter_state_dict: parameter '{name}' has shape "
                             f"{tuple(tensor.shape)} in the state but "
                             f"{tuple(params[name].shape)} in the model")
    with torch.no_grad():
        for name, entry in saved_layers.items():
            layers[name].A.copy_(entry["A"])
            layers[name].B.copy_(entry["B"])
        for name, tensor in state["trainable"].items():
            params[name].copy_(tensor)
