"""Annealed weight decay: closed forms, the official chainable cosine, the hook in a real
Detectron2 SimpleTrainer loop, and resume equivalence."""
from __future__ import annotations

import copy
import itertools
import math

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.engine import HookBase, SimpleTrainer
from torch import nn

from soma_d2.config import add_soma_config
from soma_d2.solver import (
    AnnealWeightDecayHook,
    build_optimizer,
    main_group_index,
    weight_decay_at,
)

BASE, END, T = 0.05, 1e-5, 40000


@pytest.mark.parametrize("it", [0, 1, 1234, T // 2, 30000, T - 1, T])
def test_cosine_closed_form(it):
    expected = END + (BASE - END) * 0.5 * (1 + np.cos(np.pi * it / T))
    assert weight_decay_at(BASE, END, it, T, "cosine") == pytest.approx(expected, rel=1e-12)


def test_cosine_landmarks_and_clamping():
    assert weight_decay_at(BASE, END, 0, T, "cosine") == pytest.approx(BASE)
    assert weight_decay_at(BASE, END, T // 2, T, "cosine") == pytest.approx((BASE + END) / 2)
    assert weight_decay_at(BASE, END, T, T, "cosine") == pytest.approx(END)
    assert weight_decay_at(BASE, END, T + 500, T, "cosine") == pytest.approx(END)


def test_cosine_matches_official_chainable_form():
    # mmengine's CosineAnnealingParamScheduler, chainable form (the official recipe's scheduler)
    t_max, value = 200, BASE
    for it in range(1, t_max + 1):
        value = (1 + math.cos(math.pi * it / t_max)) / (
            1 + math.cos(math.pi * (it - 1) / t_max)) * (value - END) + END if it < t_max else END
        assert weight_decay_at(BASE, END, it, t_max, "cosine") == pytest.approx(value, rel=1e-9)


@pytest.mark.parametrize("it", [0, 77, T // 2, 39999, T])
def test_linear_and_constant(it):
    assert weight_decay_at(BASE, END, it, T, "linear") == pytest.approx(BASE + (END - BASE) * it / T)
    assert weight_decay_at(BASE, END, it, T, "constant") == BASE


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
def test_zero_base_stays_zero(schedule):
    assert all(weight_decay_at(0.0, END, it, T, schedule) == 0.0 for it in (0, 1, T // 2, T))


def test_bad_schedule_and_max_iter_are_named():
    with pytest.raises(ValueError, match="SOLVER.WEIGHT_DECAY_SCHEDULE='step'"):
        weight_decay_at(BASE, END, 0, T, "step")
    with pytest.raises(ValueError, match="SOLVER.MAX_ITER=0"):
        weight_decay_at(BASE, END, 0, 0, "cosine")
    with pytest.raises(ValueError, match="SOLVER.WEIGHT_DECAY_SCHEDULE"):
        AnnealWeightDecayHook(schedule="exp")


def _groups_optimizer():
    a, b, c = (nn.Parameter(torch.zeros(n)) for n in (10, 3, 50))
    return torch.optim.AdamW([
        {"params": [a], "weight_decay": 0.05},
        {"params": [b], "weight_decay": 0.01},
        {"params": [c], "weight_decay": 0.0},
    ])


def test_zero_decay_groups_stay_zero():
    # soma-d2 keeps no-decay groups at 0 (the official chainable scheduler lifts them to ~1e-5)
    for it in range(0, 21):
        assert weight_decay_at(0.0, END, it, 20, "cosine") == 0.0
        assert weight_decay_at(0.0, END, it, 20, "linear") == 0.0


def test_main_group_is_largest_base_then_most_params():
    opt = _groups_optimizer()
    assert main_group_index(opt) == 0
    opt.add_param_group({"params": [nn.Parameter(torch.zeros(99))], "weight_decay": 0.05})
    assert main_group_index(opt) == 3


# ---- the hook in a real Detectron2 loop ------------------------------------------------------

class TinyModel(nn.Module):
    """Named like a Detectron2 model; `head.idle` gets a zero gradient so that only the weight
    decay moves it, which exposes the value the optimizer actually used."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Module()
        self.backbone.net = nn.Module()
        self.backbone.net.norm = nn.LayerNorm(4)
        self.backbone.net.proj = nn.Linear(4, 4)
        self.head = nn.Linear(4, 1)
        self.head.idle = nn.Parameter(torch.ones(6))

    def forward(self, x):
        y = self.head(self.backbone.net.proj(self.backbone.net.norm(x)))
        return {"loss": y.pow(2).mean() + 0.0 * self.head.idle.sum()}


class Recorder(HookBase):
    def __init__(self):
        self.values: dict[int, list[float]] = {}
        self.snapshots: dict[int, dict] = {}

    def after_step(self):
        opt = self.trainer.optimizer
        self.values[self.trainer.iter] = [g["weight_decay"] for g in opt.param_groups]
        self.snapshots[self.trainer.iter] = {
            "model": copy.deepcopy(self.trainer.model.state_dict()),
            "optimizer": copy.deepcopy(opt.state_dict()),
        }


def make_trainer(max_iter, lr=0.1):
    torch.manual_seed(0)
    cfg = add_soma_config(get_cfg())
    cfg.SOLVER.merge_from_list(["OPTIMIZER", "SGD", "MOMENTUM", 0.0, "BASE_LR", lr,
                                "WEIGHT_DECAY", 0.05, "MAX_ITER", max_iter])
    model = TinyModel()
    optimizer = build_optimizer(cfg, model)
    data = itertools.repeat(torch.randn(8, 4))
    trainer = SimpleTrainer(model, data, optimizer)
    recorder = Recorder()
    trainer.register_hooks([AnnealWeightDecayHook.from_config(cfg), recorder])
    return trainer, recorder, cfg


def test_hook_sets_decay_before_each_step_and_logs_it():
    trainer, recorder, cfg = make_trainer(max_iter=10)
    idle0 = trainer.model.head.idle.detach().clone()
    trainer.train(0, 10)
    groups = trainer.optimizer.param_groups
    for it in range(10):
        expected = [weight_decay_at(g["base_weight_decay"], END, it, 10, "cosine") for g in groups]
        assert recorder.values[it] == pytest.approx(expected, rel=1e-12)
    zero = [i for i, g in enumerate(groups) if g["base_weight_decay"] == 0.0]
    assert zero and all(recorder.values[it][i] == 0.0 for it in range(10) for i in zero)
    # storage: one `weight_decay` scalar per iteration, the main (head, base 0.05) group's value
    history = trainer.storage.history("weight_decay").values()
    main = main_group_index(trainer.optimizer)
    assert groups[main]["name"] == "head"
    assert [i for _, i in history] == list(range(10))
    assert [v for v, _ in history] == pytest.approx([recorder.values[i][main] for i in range(10)])
    # SGD with zero gradient: idle <- idle * (1 - lr * wd_t), with wd_t the value of iteration t
    factor = np.prod([1 - 0.1 * weight_decay_at(0.05, END, t, 10, "cosine") for t in range(10)])
    torch.testing.assert_close(trainer.model.head.idle.detach(), idle0 * float(factor))


def test_resume_matches_uninterrupted_run():
    full, rec_full, _ = make_trainer(max_iter=10)
    full.train(0, 10)
    k = 4
    resumed, rec_resumed, _ = make_trainer(max_iter=10)
    snap = rec_full.snapshots[k - 1]
    resumed.model.load_state_dict(snap["model"])
    resumed.optimizer.load_state_dict(snap["optimizer"])  # holds annealed values of iter k-1
    resumed.train(k, 10)
    for j in range(k, 10):
        assert rec_resumed.values[j] == rec_full.values[j]
    hist_full = dict((i, v) for v, i in full.storage.history("weight_decay").values())
    hist_res = dict((i, v) for v, i in resumed.storage.history("weight_decay").values())
    assert sorted(hist_res) == list(range(k, 10))
    assert all(hist_res[j] == hist_full[j] for j in range(k, 10))
    torch.testing.assert_close(resumed.model.head.idle, full.model.head.idle)


def test_hook_refuses_resume_without_base():
    model = TinyModel()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=0.01)
    trainer = SimpleTrainer(model, itertools.repeat(torch.randn(2, 4)), opt)
    trainer.register_hooks([AnnealWeightDecayHook(max_iter=10)])
    with pytest.raises(KeyError, match="base_weight_decay"):
        trainer.train(3, 4)
    # a fresh run records the current decay as the base
    trainer2 = SimpleTrainer(model, itertools.repeat(torch.randn(2, 4)), opt)
    trainer2.register_hooks([AnnealWeightDecayHook(max_iter=10, schedule="linear", end=0.0)])
    trainer2.train(0, 6)
    assert opt.param_groups[0]["base_weight_decay"] == 0.01
    assert opt.param_groups[0]["weight_decay"] == pytest.approx(0.01 * (1 - 5 / 10))
