"""Shared steps of tools/merge_adapter.py and tools/export_adapter.py.

Both rebuild the model from the config (foundation weights from MODEL.SOMA.PRETRAINED, then the
decomposition), load a trained checkpoint through `SoMACheckpointer` (full or adapter-only), and
write a new file atomically. When the checkpoint holds a started EMA of the trainable weights, the
EMA is what evaluation scored (training and `--eval-only` both swap it in), so it is what gets
exported unless the live weights are asked for; the tools say which they used, and the written
file records it under "weights".
"""
from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable
from typing import NamedTuple

import torch
from detectron2.config import CfgNode
from detectron2.utils.env import seed_all_rng

from ..checkpoint.adapter import export_adapter, merged_state_dict
from ..checkpoint.checkpointer import SoMACheckpointer
from ..config import build_cfg
from ..utils import atomic_torch_save
from .ema import ModelEMA
from .trainer import SoMATrainer

logger = logging.getLogger(__name__)

__all__ = ["TrainedModel", "export_argument_parser", "load_trained_model", "run_export_tool",
           "write_adapter", "write_merged"]


class TrainedModel(NamedTuple):
    """A loaded model and which weights it holds: "ema" or "live", with a sentence saying why."""

    model: torch.nn.Module
    weights: str
    reason: str


def load_trained_model(cfg: CfgNode, weights: str, use_ema: bool = True) -> TrainedModel:
    """Build the model of `cfg` and load `weights` (full soma-d2 checkpoint or adapter file).

    With `use_ema` (default) the EMA stored in a full checkpoint is loaded into the model when it
    has started; otherwise, or when there is none, the live (last-step) weights stay.
    """
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"checkpoint {weights!r} does not exist")
    if cfg.SEED >= 0:  # as tools/train_net.py (default_setup): the same randomly initialised parts
        seed_all_rng(cfg.SEED)
    model = SoMATrainer.build_model(cfg)
    has_trainable = any(p.requires_grad for p in model.parameters())
    ema = _StoredEMA(model, decay=0.5) if has_trainable else None  # decay etc. from the file
    checkpointer = SoMACheckpointer(model, **({"ema": ema} if ema is not None else {}))
    checkpointer.load(weights, checkpointables=["ema"] if ema is not None else [])
    model.eval()
    if ema is None or not ema.loaded:
        held = "an adapter-only file (it holds the weights it was exported with)" if _is_adapter(
            weights) else "no EMA"
        return TrainedModel(model, "live", f"live weights: {weights} holds {held}")
    if not ema.started:
        return TrainedModel(model, "live", f"live weights: the EMA in {weights} had not started "
                            f"(MODEL.EMA.START_ITER={ema.start_iter})")
    if not use_ema:
        return TrainedModel(model, "live", f"live weights as asked, although {weights} holds an "
                            f"EMA ({ema.num_updates} updates, decay {ema.decay:g})")
    ema.copy_to(model)
    return TrainedModel(model, "ema", f"EMA weights of {weights} ({ema.num_updates} updates, "
                        f"decay {ema.decay:g}), what evaluation scored")


class _StoredEMA(ModelEMA):
    """A ModelEMA that remembers whether a checkpoint had one to load."""

    loaded = False

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self.loaded = True


def _is_adapter(path: str) -> bool:
    from ..checkpoint.adapter import is_adapter_checkpoint
    from ..checkpoint.safe_load import torch_load_weights

    return is_adapter_checkpoint(torch_load_weights(path, mmap=True))


def write_adapter(cfg: CfgNode, weights: str, output: str, use_ema: bool = True
                  ) -> tuple[int, TrainedModel]:
    """Write the adapter-only file of `weights`; returns its size in bytes and what was loaded."""
    loaded = load_trained_model(cfg, weights, use_ema)
    state = export_adapter(loaded.model, cfg.dump())
    state["weights"] = loaded.weights
    atomic_torch_save(state, output)
    logger.info("Adapter file %s: %s", output, loaded.reason)
    return os.path.getsize(output), loaded


def write_merged(cfg: CfgNode, weights: str, output: str, use_ema: bool = True
                 ) -> tuple[int, TrainedModel]:
    """Write a plain checkpoint with SoMA merged (load it with MODEL.SOMA.MODE frozen)."""
    loaded = load_trained_model(cfg, weights, use_ema)
    atomic_torch_save({"model": merged_state_dict(loaded.model), "__author__": "soma-d2 merge",
                       "weights": loaded.weights}, output)
    logger.info("Merged checkpoint %s: %s", output, loaded.reason)
    return os.path.getsize(output), loaded


def export_argument_parser(description: str, weights_help: str) -> argparse.ArgumentParser:
    """The command line every export tool shares: config, checkpoint, output, EMA choice, opts."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--weights", required=True, help=weights_help)
    parser.add_argument("--output", required=True)
    parser.add_argument("--no-ema", action="store_true",
                        help="use the live (last-step) weights even when the checkpoint holds a "
                        "started EMA (default: the EMA, which is what evaluation scored)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides")
    return parser


def run_export_tool(argv: list[str] | None, description: str, weights_help: str,
                    write: Callable[..., tuple[int, TrainedModel]]
                    ) -> tuple[argparse.Namespace, int]:
    """The body every export tool shares: parse `export_argument_parser`'s command line, build the
    config, run `write(cfg, weights, output, use_ema=...)` (`write_adapter` or `write_merged`) and
    say which weights it used. Returns the arguments and the written size in bytes, from which
    each tool prints its own closing line."""
    args = export_argument_parser(description, weights_help).parse_args(argv)
    cfg = build_cfg(args.config_file, args.opts)
    size, loaded = write(cfg, args.weights, args.output, use_ema=not args.no_ema)
    print(f"used the {loaded.reason}")
    return args, size
