"""EMA of trainable weights: closed form, exact swap/restore, state round trip and the hook with a
real Detectron2 SimpleTrainer and checkpointer (save -> resume restores the EMA)."""
from __future__ import annotations

import io
import itertools

import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import HookBase, SimpleTrainer
from torch import nn

from soma_d2.engine.ema import EMAHook, ModelEMA


class Scalar(nn.Module):
    def __init__(self, dtype=torch.float32):
        super().__init__()
        self.w = nn.Parameter(torch.zeros((), dtype=dtype))
        self.frozen = nn.Parameter(torch.ones(3), requires_grad=False)


def test_closed_form_on_scalar_sequence():
    rng = np.random.default_rng(0)
    xs = rng.normal(size=12)
    decay, start = 0.8, 3
    model = Scalar(torch.float64)
    ema = ModelEMA(model, decay=decay, start_iter=start)
    for t, x in enumerate(xs):
        model.w.data.fill_(float(x))
        ema.update(model, t)
        if t < start:
            assert not ema.started
    n = len(xs) - 1
    expected = decay ** (n - start) * xs[start] + sum(
        (1 - decay) * decay ** (n - t) * xs[t] for t in range(start + 1, n + 1))
    assert ema.shadow["w"].item() == pytest.approx(expected, rel=1e-6)
    assert ema.shadow["w"].dtype == torch.float32
    assert set(ema.shadow) == {"w"}  # frozen parameters are not averaged
    assert ema.num_updates == len(xs) - start


def test_swap_restores_exactly_even_on_error():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 5), nn.Linear(5, 2)).to(torch.bfloat16)
    model[0].requires_grad_(False)
    ema = ModelEMA(model, decay=0.5)
    ema.update(model, 0)
    with torch.no_grad():
        for p in model[1].parameters():
            p.add_(torch.randn_like(p))
    ema.update(model, 1)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    with ema.swap_into(model) as m:
        assert m is model
        torch.testing.assert_close(model[1].weight, ema.shadow["1.weight"].to(torch.bfloat16))
        assert not torch.equal(model[1].weight, original["1.weight"])
    assert all(torch.equal(model.state_dict()[k], v) for k, v in original.items())
    with pytest.raises(RuntimeError, match="boom"), ema.swap_into(model):
        raise RuntimeError("boom")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in original.items())


def test_swap_before_start_leaves_live_weights():
    model = Scalar()
    model.w.data.fill_(2.0)
    ema = ModelEMA(model, decay=0.9, start_iter=10)
    ema.update(model, 5)
    model.w.data.fill_(7.0)
    with ema.swap_into(model):
        assert model.w.item() == 7.0


def test_state_roundtrip_weights_only_and_mismatch():
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    ema = ModelEMA(model, decay=0.99, start_iter=2)
    for t in range(5):
        with torch.no_grad():
            model.weight.add_(1.0)
        ema.update(model, t)
    buf = io.BytesIO()
    torch.save(ema.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    other = ModelEMA(nn.Linear(4, 3), decay=0.5, start_iter=0)
    other.load_state_dict(state)
    assert other.decay == 0.99 and other.start_iter == 2 and other.started
    assert other.num_updates == ema.num_updates == 3
    assert all(torch.equal(other.shadow[k], ema.shadow[k]) for k in ema.shadow)
    with pytest.raises(ValueError, match="missing"):
        ModelEMA(nn.Linear(4, 3, bias=False), decay=0.9).load_state_dict(state)
    with pytest.raises(ValueError, match="shape"):
        ModelEMA(nn.Linear(5, 3), decay=0.9).load_state_dict(state)
    with pytest.raises(ValueError, match="MODEL.EMA.DECAY"):
        ModelEMA(model, decay=1.5)


def test_wrapped_model_uses_inner_names():
    model = nn.Linear(2, 2)
    ema = ModelEMA(nn.DataParallel(model), decay=0.9)
    assert set(ema.shadow) == {"weight", "bias"}
    ema.update(nn.DataParallel(model), 0)
    with ema.swap_into(nn.DataParallel(model)):
        pass


class LinearLoss(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 1)
        self.frozen = nn.Linear(3, 3).requires_grad_(False)

    def forward(self, x):
        return {"loss": self.lin(self.frozen(x)).pow(2).mean()}


class WeightLog(HookBase):
    def __init__(self):
        self.weights = []

    def after_step(self):
        self.weights.append(self.trainer.model.lin.weight.detach().clone())


def make_trainer(tmp_path, name):
    torch.manual_seed(0)
    model = LinearLoss()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    trainer = SimpleTrainer(model, itertools.repeat(torch.randn(4, 3)), opt)
    ema = ModelEMA(model, decay=0.7, start_iter=2)
    (tmp_path / name).mkdir(exist_ok=True)
    trainer.checkpointer = DetectionCheckpointer(model, str(tmp_path / name), trainer=trainer)
    return trainer, ema


def test_hook_updates_after_each_step_and_checkpoint_restores(tmp_path):
    trainer, ema = make_trainer(tmp_path, "a")
    log = WeightLog()
    trainer.register_hooks([EMAHook(ema), log])  # EMA hook registers with trainer.checkpointer
    trainer.train(0, 6)
    assert trainer.checkpointer.checkpointables["ema"] is ema
    expected = log.weights[2]  # the copy at START_ITER, then the average of the later weights
    for w in log.weights[3:]:
        expected = 0.7 * expected + 0.3 * w
    torch.testing.assert_close(ema.shadow["lin.weight"], expected)
    trainer.checkpointer.save("model_0000005")

    trainer2, ema2 = make_trainer(tmp_path, "a")
    EMAHook(ema2, checkpointer=trainer2.checkpointer)  # registered before resume_or_load
    assert not ema2.started
    trainer2.checkpointer.resume_or_load(str(tmp_path / "a" / "model_0000005.pth"), resume=True)
    assert ema2.started and ema2.num_updates == ema.num_updates
    assert all(torch.equal(ema2.shadow[k], ema.shadow[k]) for k in ema.shadow)
    # registering twice (checkpointer + before_train) must not raise
    trainer2.register_hooks([EMAHook(ema2, checkpointer=trainer2.checkpointer)])
    trainer2.train(6, 7)
    assert ema2.num_updates == ema.num_updates + 1


def test_late_registration_after_resume_is_reported(tmp_path, caplog):
    trainer, ema = make_trainer(tmp_path, "b")
    trainer.register_hooks([EMAHook(ema)])
    with caplog.at_level("WARNING", logger="soma_d2.engine.ema"):
        trainer.train(5, 6)
    assert "its state was not restored" in caplog.text
    assert ema.started and trainer.checkpointer.checkpointables["ema"] is ema
