"""Reproducible cost measurements of SoMA against its baselines, as ratios within one process.

One module per benchmark -- ``svd`` (decomposition vs the official per-layer SVD loop), ``train``
(step time, peak memory and optimizer state vs LoRA, full fine-tuning and a frozen backbone),
``infer`` (merged and unmerged SoMA vs the plain ViT), ``data`` (detection loader vs the
detector's training step) and ``codino`` (the paper's Co-DINO training step, SoMA vs full
fine-tuning) -- built on ``measure`` (interleaved repetitions, statistics, isolated
memory measurement) and ``report`` (result records and tables). ``runner`` ties them together for
``tools/benchmark.py``.
"""
from .data import DATA_PRESETS, DataSpec, run_data_benchmark
from .infer import INFER_PRESETS, run_infer_benchmark
from .runner import (
    BENCHMARKS,
    DEFAULT_REPEATS,
    SIZES,
    format_markdown,
    format_tables,
    run_benchmarks,
)
from .svd import SVD_PRESETS, SVDSpec, official_svd_loop, run_svd_benchmark
from .train import TRAIN_PRESETS, TrainCase, run_train_benchmark
from .vit_cases import METHODS, VIT_PRESETS, ViTSpec

__all__ = [
    "BENCHMARKS",
    "DATA_PRESETS",
    "DEFAULT_REPEATS",
    "INFER_PRESETS",
    "METHODS",
    "SIZES",
    "SVD_PRESETS",
    "TRAIN_PRESETS",
    "VIT_PRESETS",
    "DataSpec",
    "SVDSpec",
    "TrainCase",
    "ViTSpec",
    "format_markdown",
    "format_tables",
    "official_svd_loop",
    "run_benchmarks",
    "run_data_benchmark",
    "run_infer_benchmark",
    "run_svd_benchmark",
    "run_train_benchmark",
]
