"""Exponential moving average of the trainable weights, for evaluation and checkpoints.

The segmentation recipe evaluates an EMA of the weights started at iteration 12k. With SoMA only
the adapters (and a few biases) train, so averaging the trainable parameters is enough: frozen
weights never change and their EMA would be a copy. The average is kept in float32 whatever the
parameters' dtype, and swapped into the model only for the duration of an evaluation.
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import torch
from detectron2.engine.train_loop import HookBase
from torch import nn

from ..utils import unwrap_model

logger = logging.getLogger(__name__)

__all__ = ["EMAHook", "ModelEMA"]


def _trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in unwrap_model(model).named_parameters() if p.requires_grad}


class ModelEMA:
    """EMA `ema = decay * ema + (1 - decay) * w` of the trainable parameters of a model.

    `update(model, it)` does nothing before `start_iter`, copies the weights at the first update at
    or after it, and averages afterwards. Until that first copy the EMA is "not started" and
    `swap_into` leaves the model as it is, so evaluation before `start_iter` sees the live weights
    (as mmengine's EMAHook, whose average tracks the model until its `begin_iter`).
    """

    def __init__(self, model: nn.Module, decay: float, start_iter: int = 0):
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"MODEL.EMA.DECAY={decay!r} must lie in [0, 1]")
        if start_iter < 0:
            raise ValueError(f"MODEL.EMA.START_ITER={start_iter!r} must be >= 0")
        params = _trainable(model)
        if not params:
            raise ValueError("ModelEMA: the model has no trainable parameters to average")
        self.decay = float(decay)
        self.start_iter = int(start_iter)
        self.shadow: dict[str, torch.Tensor] = {
            n: p.detach().to(torch.float32).clone() for n, p in params.items()
        }
        self.started = False
        self.num_updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module, iteration: int) -> None:
        if iteration < self.start_iter:
            return
        params = self._matching_params(model)
        if not self.started:
            for name, p in params.items():
                self.shadow[name].copy_(p.detach())
            self.started = True
        else:
            ema = list(self.shadow.values())
            new = [params[n].detach().to(device=e.device, dtype=torch.float32)
                   for n, e in zip(self.shadow, ema)]
            torch._foreach_lerp_(ema, new, 1.0 - self.decay)
        self.num_updates += 1

    def copy_to(self, model: nn.Module) -> None:
        """Load the EMA weights into `model` for good (e.g. before exporting the final model)."""
        with torch.no_grad():
            for name, p in self._matching_params(model).items():
                p.copy_(self.shadow[name])

    @contextlib.contextmanager
    def swap_into(self, model: nn.Module) -> Iterator[nn.Module]:
        """Temporarily put the EMA weights into `model`; the originals come back bit-exactly."""
        if not self.started:
            logger.info("EMA not started yet (START_ITER=%d): evaluating live weights",
                        self.start_iter)
            yield model
            return
        params = self._matching_params(model)
        backup = {n: p.detach().clone() for n, p in params.items()}
        try:
            self.copy_to(model)
            yield model
        finally:
            with torch.no_grad():
                for name, p in params.items():
                    p.copy_(backup[name])

    def state_dict(self) -> dict[str, Any]:
        return {
            "decay": self.decay,
            "start_iter": self.start_iter,
            "started": self.started,
            "num_updates": self.num_updates,
            "shadow": {n: t.clone() for n, t in self.shadow.items()},
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        shadow = state_dict["shadow"]
        missing = sorted(set(self.shadow) - set(shadow))
        unexpected = sorted(set(shadow) - set(self.shadow))
        if missing or unexpected:
            raise ValueError(
                "EMA state does not match the model's trainable parameters: "
                f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
            )
        for name, tensor in shadow.items():
            if tensor.shape != self.shadow[name].shape:
                raise ValueError(
                    f"EMA state for {name!r} has shape {tuple(tensor.shape)}, the model's "
                    f"parameter has {tuple(self.shadow[name].shape)}"
                )
            self.shadow[name].copy_(tensor)
        self.decay = float(state_dict["decay"])
        self.start_iter = int(state_dict["start_iter"])
        self.started = bool(state_dict["started"])
        self.num_updates = int(state_dict["num_updates"])

    def _matching_params(self, model: nn.Module) -> dict[str, nn.Parameter]:
        params = _trainable(model)
        if params.keys() != self.shadow.keys():
            missing = sorted(set(self.shadow) - set(params))
            extra = sorted(set(params) - set(self.shadow))
            raise ValueError(
                "the model's trainable parameters changed since the EMA was built: "
                f"missing {missing[:5]}, new {extra[:5]}"
            )
        return params


class EMAHook(HookBase):
    """Update a ModelEMA after every step and make sure checkpoints carry it.

    Pass the EMA to the checkpointer when it is built (`checkpointer(..., ema=ema)` or
    `checkpointer=` here) so that `resume_or_load`, which runs before training starts, restores it.
    Otherwise `before_train` registers it with `trainer.checkpointer` as "ema" — in time for the
    next save, too late for a resume that already happened, which it reports.
    """

    def __init__(self, ema: ModelEMA, checkpointer: Any | None = None):
        self.ema = ema
        if checkpointer is not None:
            self._register(checkpointer)

    def _register(self, checkpointer: Any) -> bool:
        if any(obj is self.ema for obj in checkpointer.checkpointables.values()):
            return False
        checkpointer.add_checkpointable("ema", self.ema)
        return True

    def before_train(self) -> None:
        checkpointer = getattr(self.trainer, "checkpointer", None)
        registered_now = checkpointer is not None and self._register(checkpointer)
        if registered_now and self.trainer.start_iter > self.ema.start_iter and not self.ema.started:
            logger.warning(
                "EMA registered with the checkpointer after resuming at iteration %d: its state "
                "was not restored; it restarts from the current weights",
                self.trainer.start_iter,
            )

    def after_step(self) -> None:
        self.ema.update(self.trainer.model, self.trainer.iter)
