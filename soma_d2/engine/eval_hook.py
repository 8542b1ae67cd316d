"""`SafeEvalHook`: Detectron2's periodic evaluation without its two side effects on a training run.

Evaluation draws random numbers (data loading, sampling-based metrics), which would shift every
later iteration of a seeded run; and Detectron2 evaluates after a run that failed on its last
iteration. The hook overrides EvalHook's `_do_eval` and `_eval_after_train` (Detectron2 internals,
checked against the installed version by tests/test_compat.py).
"""
from __future__ import annotations

from detectron2.engine import hooks

from .rng import preserved_rng

__all__ = ["SafeEvalHook"]


class SafeEvalHook(hooks.EvalHook):
    """EvalHook that leaves the RNG states untouched and skips the final evaluation of a failed run.

    Detectron2's EvalHook evaluates after training when `iter + 1 >= max_iter`, which also holds
    when the last iteration raised (e.g. a non-finite loss): a diverged model would be evaluated
    and its results written. A finished run leaves `trainer.iter == max_iter`; anything less is a
    failure.
    """

    def _do_eval(self) -> None:
        with preserved_rng():
            super()._do_eval()

    def after_train(self) -> None:
        if self.trainer.iter < self.trainer.max_iter:
            self._eval_after_train = False
        super().after_train()
