"""The foundation-model pretraining (soma_d2.pretrain, tools/pretrain_synthetic_vit.py) end to end
on a tiny setting: the loss is finite and falls, the result is an official-layout DINOv2 file that
the public loader reads back into exactly the trained weights, and a run is deterministic and
resumable (an interrupted-and-resumed run equals an uninterrupted one).
"""
from __future__ import annotations

import dataclasses
import os
import sys

import numpy as np
import pytest
import torch

from soma_d2.checkpoint import load_dinov2_weights
from soma_d2.checkpoint.dinov2 import detect_dinov2_layout
from soma_d2.modeling.vit import DinoVisionTransformer
from soma_d2.pretrain import PretrainConfig, pretrain, render_scene_bank, to_official_state_dict
from soma_d2.pretrain.scene_bank import CONDITIONS, sample_views
from soma_d2.pretrain.trainer import STATE_FILE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tiny(tmp, **kw) -> PretrainConfig:
    base = dict(output=os.path.join(tmp, "vit.pth"), work_dir=os.path.join(tmp, "work"),
                steps=16, embed_dim=48, depth=2, num_heads=2, image_size=64, num_scenes=2,
                crop_sides=(32, 64), tokens_per_step=64, warmup_steps=2, lr=3e-3,
                checkpoint_every=4, decoder_dim=32)
    base.update(kw)
    return PretrainConfig(**base)


@pytest.fixture(scope="module")
def bank():
    return render_scene_bank(2, 64, seed=0, progress=False)


def test_bank_renders_one_scene_under_every_condition(bank):
    assert bank.images.shape == (2, len(CONDITIONS), 64, 64, 3)
    clear, night = bank.images[0, 0].astype(float), bank.images[0, 1].astype(float)
    assert night.mean() < 0.6 * clear.mean()  # the night rendering is dark
    # same scene: the clear and foggy renderings agree far more than two different scenes do
    same = abs(bank.images[0, 0].astype(float) - bank.images[0, 4]).mean()
    other = abs(bank.images[0, 0].astype(float) - bank.images[1, 4]).mean()
    assert same < other
    view, other_view, offsets = sample_views(bank, np.random.default_rng(0), 3, 32, 16)
    assert view.shape == other_view.shape == (3, 3, 32, 32)
    assert offsets.min() >= 0 and offsets.max() <= 2
    assert not torch.equal(view, other_view)  # independent conditions per view


def test_official_layout_round_trips_through_the_public_loader(tmp_path):
    torch.manual_seed(0)
    vit = DinoVisionTransformer(img_size=64, patch_size=16, embed_dim=48, depth=2, num_heads=2)
    official = to_official_state_dict(vit.state_dict())
    assert "blocks.1.attn.qkv.weight" in official and "blocks.1.attn.q.weight" not in official
    assert detect_dinov2_layout(official) == "official"
    path = tmp_path / "w.pth"
    torch.save(official, path)
    loaded = load_dinov2_weights(path)
    reference = vit.state_dict()
    assert set(loaded) == set(reference)
    for key, value in reference.items():
        torch.testing.assert_close(loaded[key], value, rtol=0, atol=0, msg=key)


def test_tiny_pretraining_learns_and_writes_a_loadable_checkpoint(tmp_path, bank):
    cfg = _tiny(str(tmp_path), steps=24)
    history = pretrain(cfg, bank=bank, progress=False)
    losses = torch.tensor([h["total"] for h in history])
    mim = torch.tensor([h["mim"] for h in history])
    assert torch.isfinite(losses).all()
    assert losses[-6:].mean() < 0.9 * losses[:6].mean()
    assert mim[-6:].mean() < mim[:6].mean()
    loaded = load_dinov2_weights(cfg.output)
    vit = DinoVisionTransformer(img_size=64, patch_size=16, embed_dim=48, depth=2, num_heads=2)
    vit.load_state_dict(loaded)
    teacher = torch.load(os.path.join(cfg.work_dir, STATE_FILE), weights_only=True)["teacher"]
    for key, value in teacher.items():
        torch.testing.assert_close(loaded[key], value, rtol=0, atol=0, msg=key)
    # the detector's loader path: patch size kept, position grid resampled to its image size
    resized = load_dinov2_weights(cfg.output, patch_size=16, image_size=128)
    assert resized["pos_embed"].shape == (1, 1 + 64, 48)


def test_resumed_run_equals_uninterrupted_run(tmp_path, bank):
    straight = _tiny(str(tmp_path / "a"), steps=8)
    pretrain(straight, bank=bank, progress=False)
    interrupted = _tiny(str(tmp_path / "b"), steps=8, checkpoint_every=3)
    pretrain(interrupted, bank=bank, progress=False, stop_at=5)
    assert not os.path.exists(interrupted.output)
    history = pretrain(interrupted, resume=True, bank=bank, progress=False)
    assert [h["step"] for h in history] == list(range(8))
    a, b = load_dinov2_weights(straight.output), load_dinov2_weights(interrupted.output)
    for key in a:
        torch.testing.assert_close(a[key], b[key], msg=key)


def test_resume_refuses_a_different_configuration(tmp_path, bank):
    cfg = _tiny(str(tmp_path), steps=4)
    pretrain(cfg, bank=bank, progress=False)
    with pytest.raises(ValueError, match="mask_ratio"):
        pretrain(dataclasses.replace(cfg, mask_ratio=0.5), resume=True, bank=bank, progress=False)


def test_cli_runs_and_prints_the_hash(tmp_path, capsys):
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import pretrain_synthetic_vit as tool

    out = tmp_path / "cli.pth"
    tool.main(["--steps", "2", "--embed-dim", "32", "--depth", "1", "--num-heads", "2",
               "--image-size", "64", "--num-scenes", "1", "--crop-sides", "32",
               "--tokens-per-step", "16", "--decoder-dim", "16", "--warmup-steps", "1",
               "--output", str(out), "--work-dir", str(tmp_path / "w"), "--threads", "1"])
    printed = capsys.readouterr().out
    assert "step 2/2" in printed and f"wrote {out} (sha256 " in printed
    assert detect_dinov2_layout(torch.load(out, weights_only=True)) == "official"
