"""LR schedules against closed forms (detection recipe, poly) and independent references (fvcore's
PolynomialDecayParamScheduler, mmengine's chainable PolyLR); per-group multipliers survive."""
from __future__ import annotations

import math
import warnings
from bisect import bisect_right

import pytest
import torch
from detectron2.config import get_cfg
from fvcore.common.param_scheduler import PolynomialDecayParamScheduler
from torch import nn

from soma_d2.config import add_soma_config
from soma_d2.solver import PolyParamScheduler, build_lr_scheduler, build_optimizer


def make(**solver):
    cfg = add_soma_config(get_cfg())
    for k, v in solver.items():
        cfg.SOLVER[k] = v
    model = nn.Module()
    model.backbone = nn.Module()
    model.backbone.net = nn.Linear(3, 3)
    model.roi_heads = nn.Linear(3, 2)
    optimizer = build_optimizer(cfg, model)
    return cfg, optimizer, build_lr_scheduler(cfg, optimizer)


def run(optimizer, scheduler, max_iter, checkpoints):
    """Step like Detectron2's LRScheduler hook; record each group's lr used at `checkpoints`."""
    seen, wanted = {}, set(checkpoints)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # lr_scheduler.step() before optimizer.step()
        for it in range(max_iter + 1):
            if it in wanted:
                seen[it] = {g["name"]: g["lr"] for g in optimizer.param_groups}
            if it < max_iter:  # the trainer's last step sets the lr "of" iteration MAX_ITER
                scheduler.step()
    return seen


DET_CHECKS = [0, 1, 750, 1499, 1500, 1501, 10000, 23999, 24000, 24001, 31999, 32000, 39999, 40000]


def test_detection_recipe_multistep():
    base, T = 2e-4, 40000
    cfg, opt, sched = make(LR_SCHEDULER_NAME="WarmupMultiStepLR", BASE_LR=base, MAX_ITER=T,
                           WARMUP_ITERS=1500, WARMUP_FACTOR=0.01, STEPS=(24000, 32000), GAMMA=0.1)
    seen = run(opt, sched, T, DET_CHECKS)
    for it in DET_CHECKS:
        warm = 0.01 + (1 - 0.01) * it / 1500 if it < 1500 else 1.0
        expected = base * warm * 0.1 ** bisect_right([24000, 32000], it)
        assert seen[it]["head"] == pytest.approx(expected, rel=1e-6), it
        assert seen[it]["backbone"] == pytest.approx(0.5 * expected, rel=1e-6), it


def test_cosine_is_detectron2s():
    base, T = 1e-3, 1000
    _, opt, sched = make(LR_SCHEDULER_NAME="WarmupCosineLR", BASE_LR=base, MAX_ITER=T,
                         WARMUP_ITERS=0)
    seen = run(opt, sched, T, [0, 250, 500, 999])
    for it, lrs in seen.items():
        assert lrs["head"] == pytest.approx(base * 0.5 * (1 + math.cos(math.pi * it / T)), rel=1e-6)


POLY_CHECKS = [0, 1, 1000, 12000, 20000, 33333, 39999, 40000]


def test_poly_closed_form_and_references():
    base, T, power = 1e-4, 40000, 0.9
    _, opt, sched = make(LR_SCHEDULER_NAME="WarmupPolyLR", BASE_LR=base, MAX_ITER=T,
                         WARMUP_ITERS=0, POLY_POWER=power)
    seen = run(opt, sched, T, POLY_CHECKS)
    fv = PolynomialDecayParamScheduler(1.0, power)
    for it in POLY_CHECKS:
        expected = base * (1 - it / T) ** power
        assert seen[it]["head"] == pytest.approx(expected, rel=1e-6, abs=1e-15), it
        assert seen[it]["head"] == pytest.approx(base * fv(it / T), rel=1e-6, abs=1e-15), it
        assert seen[it]["backbone"] == pytest.approx(0.5 * expected, rel=1e-6, abs=1e-15), it
    assert seen[T]["head"] == 0.0


def test_poly_matches_mmengine_chainable_form():
    # mmengine PolyParamScheduler._get_value with eta_min=0 and total_iters = MAX_ITER
    base, T, power = 1e-4, 300, 0.9
    _, opt, sched = make(LR_SCHEDULER_NAME="WarmupPolyLR", BASE_LR=base, MAX_ITER=T,
                         WARMUP_ITERS=0, POLY_POWER=power)
    seen = run(opt, sched, T, range(T + 1))
    lr = base
    for it in range(1, T + 1):
        lr = lr * (1 - 1 / (T - it + 1)) ** power
        assert seen[it]["head"] == pytest.approx(lr, rel=1e-9, abs=1e-15), it


def test_poly_with_warmup_and_min_lr():
    base, T, power, W = 1e-4, 40000, 0.9, 1500
    _, opt, sched = make(LR_SCHEDULER_NAME="WarmupPolyLR", BASE_LR=base, MAX_ITER=T,
                         WARMUP_ITERS=W, WARMUP_FACTOR=0.01, POLY_POWER=power, BASE_LR_END=1e-6)
    seen = run(opt, sched, T, POLY_CHECKS + [750, 1500])
    end = 1e-6 / base

    def poly(it):
        return end + (1 - end) * (1 - it / T) ** power

    for it in POLY_CHECKS + [750, 1500]:
        if it < W:  # linear from 1% of poly(0) to poly(W), as Detectron2's WarmupParamScheduler
            expected = base * (0.01 + (poly(W) - 0.01) * it / W)
        else:
            expected = base * poly(it)
        assert seen[it]["head"] == pytest.approx(expected, rel=1e-6), it
    assert seen[T]["head"] == pytest.approx(1e-6)


def test_poly_param_scheduler_past_the_end():
    assert PolyParamScheduler(0.9)(1.2) == 0.0
    assert PolyParamScheduler(0.9, 0.1)(1.0) == pytest.approx(0.1)


def test_bad_names_and_values():
    with pytest.raises(ValueError, match=r"SOLVER.LR_SCHEDULER_NAME='Poly'.*WarmupPolyLR"):
        make(LR_SCHEDULER_NAME="Poly")
    with pytest.raises(ValueError, match="SOLVER.BASE_LR_END"):
        make(LR_SCHEDULER_NAME="WarmupPolyLR", BASE_LR=1e-4, BASE_LR_END=1e-3)
    with pytest.raises(ValueError, match="SOLVER.POLY_POWER"):
        make(LR_SCHEDULER_NAME="WarmupPolyLR", POLY_POWER=0.0)


def test_scheduler_state_roundtrip_resumes_same_lr():
    _, opt, sched = make(LR_SCHEDULER_NAME="WarmupPolyLR", BASE_LR=1e-4, MAX_ITER=100,
                         WARMUP_ITERS=10, WARMUP_FACTOR=0.01)
    run(opt, sched, 36, [])
    state, opt_state = sched.state_dict(), opt.state_dict()
    _, opt2, sched2 = make(LR_SCHEDULER_NAME="WarmupPolyLR", BASE_LR=1e-4, MAX_ITER=100,
                           WARMUP_ITERS=10, WARMUP_FACTOR=0.01)
    opt2.load_state_dict(opt_state)
    sched2.load_state_dict(state)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        sched.step()
        sched2.step()
    assert [g["lr"] for g in opt2.param_groups] == [g["lr"] for g in opt.param_groups]
    assert isinstance(sched2, torch.optim.lr_scheduler.LRScheduler)
