"""LR schedules: Detectron2's own plus the warm-up + poly schedule of the segmentation recipe.

Detectron2 ships multi-step and cosine schedules but no poly one, which mmseg's recipes use. All
schedules are fvcore multipliers applied by Detectron2's `LRMultiplier`, which scales each group's
initial lr, so the per-group multipliers of the optimizer builder survive every schedule.
"""
from __future__ import annotations

import torch
from detectron2.config import CfgNode
from detectron2.solver import LRMultiplier, WarmupParamScheduler
from detectron2.solver import build_lr_scheduler as d2_build_lr_scheduler
from fvcore.common.param_scheduler import ParamScheduler

__all__ = ["D2_SCHEDULERS", "LR_SCHEDULERS", "PolyParamScheduler", "build_lr_scheduler"]

D2_SCHEDULERS = ("WarmupMultiStepLR", "WarmupCosineLR", "WarmupStepWithFixedGammaLR")
LR_SCHEDULERS = (*D2_SCHEDULERS, "WarmupPolyLR")


class PolyParamScheduler(ParamScheduler):
    """fvcore-style poly multiplier: `end + (1 - end) * (1 - where) ** power`, 1 at 0, `end` at 1.

    fvcore's PolynomialDecayParamScheduler without a floor; `where` past 1 stays at `end` instead
    of raising a negative base to a fractional power.
    """

    def __init__(self, power: float, end_value: float = 0.0):
        self._power = float(power)
        self._end_value = float(end_value)

    def __call__(self, where: float) -> float:
        return self._end_value + (1.0 - self._end_value) * max(0.0, 1.0 - where) ** self._power


def build_lr_scheduler(
    cfg: CfgNode, optimizer: torch.optim.Optimizer
) -> torch.optim.lr_scheduler.LRScheduler:
    """Build SOLVER.LR_SCHEDULER_NAME: Detectron2's schedules, or WarmupPolyLR.

    WarmupPolyLR: poly with SOLVER.POLY_POWER over the whole MAX_ITER down to the fraction
    BASE_LR_END / BASE_LR of each group's lr (0 = mmseg's PolyLR with eta_min=0), after Detectron2's warm-up
    (WARMUP_ITERS, WARMUP_FACTOR, WARMUP_METHOD; RESCALE_INTERVAL=True starts the poly after the
    warm-up, as mmseg's `begin=warmup` does). mmengine's PolyLR reaches 0 one iteration earlier
    (at MAX_ITER - 1); the difference is one step of a vanishing lr.
    """
    solver = cfg.SOLVER
    name = solver.LR_SCHEDULER_NAME
    if name in D2_SCHEDULERS:
        return d2_build_lr_scheduler(cfg, optimizer)
    if name != "WarmupPolyLR":
        raise ValueError(
            f"SOLVER.LR_SCHEDULER_NAME={name!r}; accepted: {', '.join(LR_SCHEDULERS)}"
        )
    if solver.MAX_ITER <= 0:
        raise ValueError(f"SOLVER.MAX_ITER={solver.MAX_ITER!r}: WarmupPolyLR needs MAX_ITER > 0")
    if solver.POLY_POWER <= 0:
        raise ValueError(f"SOLVER.POLY_POWER={solver.POLY_POWER!r}: expected a positive power")
    end_value = solver.BASE_LR_END / solver.BASE_LR if solver.BASE_LR else 0.0
    if not 0.0 <= end_value <= 1.0:
        raise ValueError(
            f"SOLVER.BASE_LR_END={solver.BASE_LR_END!r} must lie in [0, SOLVER.BASE_LR="
            f"{solver.BASE_LR!r}]"
        )
    sched = WarmupParamScheduler(
        PolyParamScheduler(solver.POLY_POWER, end_value),
        solver.WARMUP_FACTOR,
        min(solver.WARMUP_ITERS / solver.MAX_ITER, 1.0),
        solver.WARMUP_METHOD,
        solver.RESCALE_INTERVAL,
    )
    return LRMultiplier(optimizer, multiplier=sched, max_iter=solver.MAX_ITER)
