"""Prediction PNGs of a trained model, one per test domain (used by `make demo`)."""
from __future__ import annotations

import os

from detectron2.config import CfgNode

from ..data.visualize import save_prediction_grids
from .export import load_trained_model
from .trainer import SoMATrainer

__all__ = ["save_domain_predictions"]


def save_domain_predictions(
    cfg: CfgNode, weights: str, num_images: int = 4, score_threshold: float = 0.5
) -> list[str]:
    """Load `weights` into the model of `cfg` and draw its boxes on each `DATASETS.TEST` domain;
    `num_images` 0 draws nothing (`tools/demo.py --num-vis 0`)."""
    if num_images <= 0:
        return []
    model = load_trained_model(cfg, weights).model
    loaders = {name: SoMATrainer.build_test_loader(cfg, name) for name in cfg.DATASETS.TEST}
    paths = save_prediction_grids(model, loaders, cfg.OUTPUT_DIR, num_images, score_threshold)
    return [paths[name] for name in cfg.DATASETS.TEST if os.path.exists(paths[name])]
