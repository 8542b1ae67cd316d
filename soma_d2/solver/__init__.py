"""Optimizer, annealed weight decay and LR schedules of the SoMA recipe, for Detectron2."""
from .lr_scheduler import LR_SCHEDULERS, PolyParamScheduler, build_lr_scheduler
from .optimizer import build_optimizer, format_param_groups, get_param_groups
from .weight_decay import (
    WEIGHT_DECAY_SCHEDULES,
    AnnealWeightDecayHook,
    main_group_index,
    weight_decay_at,
)

__all__ = [
    "LR_SCHEDULERS",
    "WEIGHT_DECAY_SCHEDULES",
    "AnnealWeightDecayHook",
    "PolyParamScheduler",
    "build_lr_scheduler",
    "build_optimizer",
    "format_param_groups",
    "get_param_groups",
    "main_group_index",
    "weight_decay_at",
]
