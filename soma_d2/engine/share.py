"""Steps of tools/export_peft.py: rebuild the model of a config, snapshot the freshly decomposed
backbone, load the trained checkpoint, and write a PEFT LoRA adapter or timm weights.

The snapshot is what makes the PEFT export exact: a SoMA layer does not store its starting factors
``B0 A0``, but a backbone freshly built from ``MODEL.SOMA.PRETRAINED`` holds them (and the frozen
residuals of the checkpoint are checked against it).
"""
from __future__ import annotations

import json
import os
from typing import Any

import torch
from detectron2.config import CfgNode

from ..checkpoint import convert_dinov2_state_dict, read_weight_file
from ..checkpoint.dinov3 import convert_dinov3_state_dict, detect_vit_family
from ..checkpoint.peft_export import (
    PeftExport,
    capture_initial_state,
    peft_lora_export,
    timm_state_dict,
    write_peft_adapter,
)
from ..modeling.backbone import build_soma_vit
from ..utils import atomic_torch_save, atomic_write, atomic_write_text, unwrap_model
from .export import load_trained_model

__all__ = ["write_peft", "write_timm"]


def _trained_backbone(cfg: CfgNode, weights: str) -> tuple[torch.nn.Module, dict[str, Any], str]:
    """The trained ViT (EMA weights when the checkpoint holds a started EMA, as evaluation used),
    a snapshot of the same ViT freshly built from MODEL.SOMA.PRETRAINED, and which weights."""
    if not cfg.MODEL.SOMA.PRETRAINED:
        raise ValueError("MODEL.SOMA.PRETRAINED must name the original DINOv2 weights the "
                         "checkpoint was trained from (the export is defined over them)")
    trained = load_trained_model(cfg, weights)
    vit = unwrap_model(trained.model).backbone.net
    # the starting factors B0, A0: a second build decomposes the same weights again (a hit of
    # the decomposition cache when it is on)
    initial = capture_initial_state(build_soma_vit(cfg))
    return vit.eval(), initial, trained.reason


def write_peft(cfg: CfgNode, weights: str, output: str,
               base_model_name_or_path: str | None = None) -> PeftExport:
    """Write the PEFT LoRA adapter directory of a trained checkpoint; returns what was written."""
    path = cfg.MODEL.SOMA.PRETRAINED
    raw, meta = read_weight_file(path)
    if detect_vit_family(raw) == "dinov3":
        source_patch = convert_dinov3_state_dict(raw, source=path).patch_size[0]
    else:
        source_patch = convert_dinov2_state_dict(raw, source=path, meta=meta).patch_size[0]
    del raw
    vit, initial, reason = _trained_backbone(cfg, weights)
    export = peft_lora_export(vit, initial, source_patch_size=source_patch,
                              base_model_name_or_path=base_model_name_or_path)
    export.notes.insert(0, reason)
    write_peft_adapter(export, output)
    return export


def write_timm(cfg: CfgNode, weights: str, output: str) -> tuple[dict[str, Any], str]:
    """Write merged timm weights (``.safetensors`` or torch file by suffix) and a ``.json`` of the
    ``timm.create_model`` kwargs next to them; returns those kwargs and which weights were used."""
    vit, _, reason = _trained_backbone(cfg, weights)
    state, kwargs = timm_state_dict(vit)
    if output.endswith(".safetensors"):
        from safetensors.torch import save as save_bytes

        blob = save_bytes(state)
        atomic_write(output, "wb", lambda f: f.write(blob))
    else:
        atomic_torch_save(state, output)
    atomic_write_text(json.dumps(kwargs, indent=2) + "\n", os.path.splitext(output)[0] + ".json")
    return kwargs, reason
