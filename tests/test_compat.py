"""The private Detectron2 / fvcore names in `soma_d2.compat`, checked against what is installed:
an upgrade that renames or changes one of them fails here, not deep inside a training run."""
from __future__ import annotations

import pytest
import torch
from detectron2.data import build_detection_train_loader
from detectron2.data.common import AspectRatioGroupedDataset
from detectron2.data.samplers import TrainingSampler
from detectron2.engine import SimpleTrainer, hooks
from torch import nn

from soma_d2 import compat
from soma_d2.engine.eval_hook import SafeEvalHook


def test_global_clipping_optimizer_clips_the_total_norm_before_stepping():
    p, q = nn.Parameter(torch.zeros(3)), nn.Parameter(torch.zeros(4))
    cls = compat.optimizer_class_with_global_clipping(
        torch.optim.SGD, lambda params: torch.nn.utils.clip_grad_norm_(params, max_norm=1.0))
    opt = cls([p, q], lr=1.0)
    assert issubclass(cls, torch.optim.SGD)
    p.grad, q.grad = torch.full((3,), 3.0), torch.full((4,), 4.0)
    opt.step()
    # one clip over both tensors: the step has total norm 1 (per-tensor clipping would give sqrt 2)
    assert torch.cat([p, q]).norm().item() == pytest.approx(1.0, rel=1e-5)


def test_incompatible_keys_has_the_fields_the_checkpointer_reports():
    keys = compat.IncompatibleKeys(missing_keys=["a"], unexpected_keys=[], incorrect_shapes=[])
    assert keys.missing_keys == ["a"] and keys.incorrect_shapes == []


def test_sampler_seed_is_readable_and_settable():
    sampler = TrainingSampler(5, seed=7)
    assert compat.sampler_seed(sampler) == 7
    first = list(zip(range(5), iter(sampler)))
    assert compat.set_sampler_seed(sampler, 8) and compat.sampler_seed(sampler) == 8
    assert list(zip(range(5), iter(sampler))) != first
    assert compat.sampler_seed(object()) is None and not compat.set_sampler_seed(object(), 1)


@pytest.mark.parametrize("grouping", [True, False])
def test_train_loader_generator_is_the_one_detectron2_seeded(grouping):
    records = [{"i": i, "width": 8, "height": 6} for i in range(4)]
    loader = build_detection_train_loader(records, mapper=lambda d: d, total_batch_size=2,
                                          sampler=TrainingSampler(4, seed=0),
                                          aspect_ratio_grouping=grouping, seed=123)
    assert isinstance(loader, AspectRatioGroupedDataset) == grouping
    generator = compat.train_loader_generator(loader)
    assert isinstance(generator, torch.Generator) and generator.initial_seed() == 123


class _Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))

    def forward(self, batch):
        return {"loss": (self.w * 0).sum()}


def _run_with_eval_hook(max_iter: int, fail_at: int | None, hook_cls=SafeEvalHook
                        ) -> list[int]:
    model = _Model()
    seen: list[int] = []

    def data():
        while True:
            yield [{}]

    trainer = SimpleTrainer(model, data(), torch.optim.SGD(model.parameters(), lr=0.1))
    trainer.register_hooks([hook_cls(0, lambda: seen.append(trainer.iter) or {})])
    if fail_at is not None:
        def step():
            if trainer.iter == fail_at:
                raise FloatingPointError("diverged")
        trainer.run_step = step
    with pytest.raises(FloatingPointError) if fail_at is not None else _nothing():
        trainer.train(0, max_iter)
    return seen


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_safe_eval_hook_evaluates_a_finished_run_keeps_rng_and_skips_a_failed_one():
    state = torch.get_rng_state()
    assert _run_with_eval_hook(3, fail_at=None) == [3]  # EvalHook's final evaluation
    # a run failing in its last step: Detectron2's EvalHook still evaluates, ours does not
    assert _run_with_eval_hook(3, fail_at=2, hook_cls=hooks.EvalHook) == [2]
    assert _run_with_eval_hook(3, fail_at=2) == []
    assert torch.equal(torch.get_rng_state(), state)
