"""Shared steps of tools/merge_adapter.py and tools/export_adapter.py.

Both rebuild the model from the config (foundation weights from MODEL.SOMA.PRETRAINED, then the
decomposition), load a trained checkpoint through `SoMACheckpointer` (full or adapter-only), and
write a new file atomically.
"""
from __future__ import annotations

import logging
import os

import torch
from detectron2.config import CfgNode

from ..checkpoint.adapter import export_adapter, merged_state_dict
from ..checkpoint.checkpointer import SoMACheckpointer
from ..utils import atomic_torch_save
from .trainer import SoMATrainer

logger = logging.getLogger(__name__)

__all__ = ["load_trained_model", "write_adapter", "write_merged"]


def load_trained_model(cfg: CfgNode, weights: str) -> torch.nn.Module:
    """Build the model of `cfg` and load `weights` (full soma-d2 checkpoint or adapter file)."""
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"checkpoint {weights!r} does not exist")
    model = SoMATrainer.build_model(cfg)
    SoMACheckpointer(model).load(weights, checkpointables=[])
    return model.eval()


def write_adapter(cfg: CfgNode, weights: str, output: str) -> int:
    """Write the adapter-only file of `weights`; returns its size in bytes."""
    model = load_trained_model(cfg, weights)
    atomic_torch_save(export_adapter(model, cfg.dump()), output)
    return os.path.getsize(output)


def write_merged(cfg: CfgNode, weights: str, output: str) -> int:
    """Write a plain checkpoint with SoMA merged (load it with MODEL.SOMA.MODE frozen)."""
    model = load_trained_model(cfg, weights)
    atomic_torch_save({"model": merged_state_dict(model), "__author__": "soma-d2 merge"}, output)
    return os.path.getsize(output)
