"""Annealed weight decay: every decayed group moves from its base decay to one end value.

SoMA anneals the decay (cosine from the base value to 1e-5 in the recipe) so that early training
keeps the adapters close to their start while late training is free to fit the task. Detectron2
schedules only the lr, so this module adds the schedule as a pure function, an LR-scheduler-like
class, and a trainer hook. The hook recomputes the value from `trainer.iter` before each step, so
it holds no state and a resumed run sees exactly the values of an uninterrupted one. Groups whose
base decay is zero (norms, tokens) stay at zero; the official mmengine scheduler lets them drift up
towards the end value, which we deliberately do not copy.
"""
from __future__ import annotations

import math

import torch
from detectron2.config import CfgNode
from detectron2.engine.train_loop import HookBase

__all__ = [
    "WEIGHT_DECAY_SCHEDULES",
    "AnnealWeightDecayHook",
    "main_group_index",
    "weight_decay_at",
]

WEIGHT_DECAY_SCHEDULES = ("constant", "cosine", "linear")


def _check(schedule: str, max_iter: int) -> None:
    if schedule not in WEIGHT_DECAY_SCHEDULES:
        raise ValueError(
            f"SOLVER.WEIGHT_DECAY_SCHEDULE={schedule!r}; accepted: {', '.join(WEIGHT_DECAY_SCHEDULES)}"
        )
    if max_iter <= 0:
        raise ValueError(f"SOLVER.MAX_ITER={max_iter!r}: the weight-decay schedule needs MAX_ITER > 0")


def weight_decay_at(base: float, end: float, it: int, max_iter: int, schedule: str) -> float:
    """Weight decay at iteration `it` for a group with base decay `base` (zero stays zero).

    cosine: end + (base - end) * (1 + cos(pi * t)) / 2; linear: base + (end - base) * t; with
    t = it / max_iter clamped to [0, 1], so iterations past MAX_ITER keep the end value.
    """
    _check(schedule, max_iter)
    if base == 0.0:
        return 0.0
    t = min(max(it, 0), max_iter) / max_iter
    if schedule == "cosine":
        return end + (base - end) * 0.5 * (1.0 + math.cos(math.pi * t))
    if schedule == "linear":
        return base + (end - base) * t
    return base


def _ensure_base(optimizer: torch.optim.Optimizer, resuming: bool) -> None:
    # Like torch's `initial_lr`: a fresh run records the current decay as the base; a resumed run
    # must find it (the current value may already be annealed).
    for i, group in enumerate(optimizer.param_groups):
        if "base_weight_decay" in group:
            continue
        if resuming:
            raise KeyError(
                f"param_groups[{i}] has no 'base_weight_decay' while resuming; build the optimizer "
                "with soma_d2.solver.build_optimizer or set the key on every group"
            )
        group["base_weight_decay"] = group["weight_decay"]


def main_group_index(optimizer: torch.optim.Optimizer) -> int:
    """Index of the "main" group: the largest base decay, then the most parameter elements.

    Its decay is the one logged as `weight_decay`: since all decayed groups share the end value and
    the shape, the group with the largest base shows the schedule at full scale (SOLVER.WEIGHT_DECAY
    when the head trains), and the element count breaks ties toward the bulk of the model.
    """
    def key(i: int) -> tuple[float, int]:
        group = optimizer.param_groups[i]
        base = group.get("base_weight_decay", group["weight_decay"])
        return base, sum(p.numel() for p in group["params"])

    return max(range(len(optimizer.param_groups)), key=key)


def _apply(optimizer: torch.optim.Optimizer, end: float, it: int, max_iter: int,
           schedule: str) -> None:
    for group in optimizer.param_groups:
        group["weight_decay"] = weight_decay_at(
            group["base_weight_decay"], end, it, max_iter, schedule
        )


class AnnealWeightDecayHook(HookBase):
    """Set every group's decay for `trainer.iter` before each step and log the main group's.

    Stateless by design: the value depends on the iteration only, so `--resume` needs nothing from
    the checkpoint. `max_iter` defaults to `trainer.max_iter`; pass SOLVER.MAX_ITER when a run may
    stop early. The scalar `weight_decay` goes to EventStorage next to Detectron2's `lr`.
    """

    def __init__(
        self,
        schedule: str = "cosine",
        end: float = 1e-5,
        max_iter: int | None = None,
        optimizer: torch.optim.Optimizer | None = None,
    ):
        _check(schedule, 1 if max_iter is None else max_iter)
        self._schedule = schedule
        self._end = float(end)
        self._max_iter = max_iter
        self._optimizer = optimizer
        self._main = 0

    @classmethod
    def from_config(cls, cfg: CfgNode) -> AnnealWeightDecayHook:
        return cls(
            schedule=cfg.SOLVER.WEIGHT_DECAY_SCHEDULE,
            end=cfg.SOLVER.WEIGHT_DECAY_END,
            max_iter=cfg.SOLVER.MAX_ITER,
        )

    def before_train(self) -> None:
        self._optimizer = self._optimizer or self.trainer.optimizer
        self._max_iter = self._max_iter or self.trainer.max_iter
        _check(self._schedule, self._max_iter)
        _ensure_base(self._optimizer, resuming=self.trainer.start_iter > 0)
        self._main = main_group_index(self._optimizer)

    def before_step(self) -> None:
        _apply(self._optimizer, self._end, self.trainer.iter, self._max_iter, self._schedule)
        value = self._optimizer.param_groups[self._main]["weight_decay"]
        self.trainer.storage.put_scalar("weight_decay", value, smoothing_hint=False)
