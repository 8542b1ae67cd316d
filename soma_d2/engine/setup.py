"""From command-line arguments to a validated config, and the train / eval-only entry points.

`tools/train_net.py` stays a thin Detectron2-style script; everything it runs lives here so that
tests and other tools (demo, benchmarks) use exactly the same path, including in each process that
Detectron2's `launch` starts (datasets are registered inside `setup_cfg`, which every process runs).
"""
from __future__ import annotations

import argparse
import logging
import os
from collections import OrderedDict

from detectron2.config import CfgNode
from detectron2.engine import default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..checkpoint.checkpointer import SoMACheckpointer
from ..config import build_cfg
from ..data import register_dwd, register_synthetic_semseg
from ..data.catalog_entries import (
    check_class_counts,
    import_registration_modules,
    register_dataset_entries,
)
from ..data.corruptions import register_corrupted_copies
from .ema import ModelEMA
from .trainer import SoMATrainer, check_output_dir_writable, check_run_datasets

logger = logging.getLogger(__name__)

__all__ = ["build_cfg", "check_arguments", "evaluate_only", "setup_cfg", "shutdown_distributed",
           "train"]


def check_arguments(args: argparse.Namespace) -> None:
    """Fail in the launching process, before any worker starts: the config and its
    `DATASETS.REGISTER` entries parse, and every `--register-module` file exists."""
    for path in getattr(args, "register_module", None) or []:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"--register-module {path!r}: file not found")
    build_cfg(args.config_file, args.opts)


def setup_cfg(args: argparse.Namespace) -> CfgNode:
    """`build_cfg` + Detectron2's `default_setup` (logging, output dir, seed) + dataset registration.

    Registration order: the built-in data sets, then the `--register-module` files, then the
    `DATASETS.REGISTER` entries (which refuse a name already registered with other contents).
    """
    cfg = build_cfg(args.config_file, args.opts)
    register_dwd(root=cfg.DATASETS.DWD_ROOT or None, prefix=cfg.DATASETS.DWD_PREFIX)
    register_synthetic_semseg(cfg.DATASETS.SYNTHETIC_SEG_ROOT or None,
                              prefix=cfg.DATASETS.SYNTHETIC_SEG_PREFIX)
    import_registration_modules(getattr(args, "register_module", None) or [])
    register_dataset_entries(list(cfg.DATASETS.REGISTER))
    check_class_counts(cfg)
    if cfg.DATASETS.TEST_CORRUPTION_DIR:  # stored corrupted copies: <dataset>-<corruption>-<sev>
        register_corrupted_copies(cfg.DATASETS.TEST_CORRUPTION_DIR)
    cfg.freeze()
    if comm.is_main_process() and not getattr(args, "eval_only", False):
        check_output_dir_writable(cfg.OUTPUT_DIR)  # before default_setup writes log.txt there
    default_setup(cfg, args)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="soma_d2")
    return cfg


def train(cfg: CfgNode, resume: bool = False) -> OrderedDict | None:
    """Train from `cfg` (resuming from OUTPUT_DIR's last checkpoint when `resume`)."""
    trainer = SoMATrainer(cfg)
    trainer.resume_or_load(resume=resume)
    return trainer.train()


def evaluate_only(cfg: CfgNode) -> OrderedDict:
    """Evaluate `MODEL.WEIGHTS` (full checkpoint or adapter file) on every `DATASETS.TEST` entry."""
    check_run_datasets(cfg, training=False)  # before the model is built (and decomposed)
    model = SoMATrainer.build_model(cfg)
    ema = ModelEMA(model, decay=cfg.MODEL.EMA.DECAY, start_iter=0) if cfg.MODEL.EMA.ENABLED else None
    extra = {"ema": ema} if ema is not None else {}
    checkpointer = SoMACheckpointer(model, save_dir=cfg.OUTPUT_DIR, **extra)
    if not cfg.MODEL.WEIGHTS:
        logger.warning("MODEL.WEIGHTS is empty: evaluating the model as built (no trained weights)")
    if cfg.MODEL.WEIGHTS:
        # the EMA is a checkpointable: load it too, so eval-only scores what training scored
        checkpointer.load(cfg.MODEL.WEIGHTS, checkpointables=["ema"] if ema is not None else [])
    if ema is not None and ema.started:
        with ema.swap_into(model):
            results = SoMATrainer.test(cfg, model)
    else:
        results = SoMATrainer.test(cfg, model)
    comm.synchronize()
    return results


def shutdown_distributed(synchronize: bool = True) -> None:
    """Leave the process group of a multi-process run explicitly before the process exits.

    Left to interpreter exit, gloo's background threads can be destroyed while still joinable
    ("terminate called without an active exception", SIGABRT), which fails a `--num-gpus N` run
    that has already trained, evaluated and saved. `synchronize` waits for every rank first (only
    after a successful run: after a failure the other ranks may never arrive).
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    if synchronize:
        comm.synchronize()
    dist.destroy_process_group()
