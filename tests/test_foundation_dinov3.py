"""The shipped DINOv3-architecture foundation ViT (pretrained/synthetic_dinov3_d192_l4.pth): its
bytes are the recorded ones, it is in the official DINOv3 layout and loads through the public
DINOv3 loader into the DINOv3 demo's ViT, and linear probes on its frozen features tell classes
apart in every condition, carry a clear-day class probe over to night, and beat a random ViT."""
from __future__ import annotations

import hashlib
import json
import os

import pytest
import torch

from soma_d2.checkpoint import read_weight_file
from soma_d2.checkpoint.dinov3 import detect_dinov3_layout, load_dinov3_weights
from soma_d2.config import build_cfg
from soma_d2.modeling.backbone import build_soma_vit
from soma_d2.modeling.dinov3 import DinoV3VisionTransformer
from soma_d2.pretrain.probe import probe_vit, render_probe_data

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECORD = os.path.join(REPO, "pretrained", "synthetic_dinov3_d192_l4.json")
DEMO = os.path.join(REPO, "configs", "demo", "synthetic_soma_dinov3.yaml")
PER_CONDITION = 24  # as tests/test_foundation_vit.py, so the two models' probes compare


@pytest.fixture(scope="module")
def record() -> dict:
    with open(RECORD) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def weights(record) -> str:
    return os.path.join(REPO, record["file"])


def test_shipped_file_matches_its_recorded_hash_and_command(record, weights):
    digest = hashlib.sha256(open(weights, "rb").read()).hexdigest()
    assert digest == record["sha256"] and os.path.getsize(weights) == record["bytes"]
    assert os.path.getsize(weights) < 25 * 2**20
    assert record["command"].startswith("python tools/pretrain_synthetic_vit.py --family dinov3")
    assert f"--output {record['file']}" in record["command"]
    assert record["config"]["family"] == "dinov3" and record["config"]["steps"] == 2400


def test_shipped_file_is_official_dinov3_layout_and_loads_into_the_demo_vit(weights):
    raw, _ = read_weight_file(weights)
    assert detect_dinov3_layout(raw) == "official"
    assert "storage_tokens" in raw and "pos_embed" not in raw
    assert raw["blocks.0.attn.qkv.weight"].shape == (3 * 192, 192)
    cfg = build_cfg(DEMO, ["MODEL.SOMA.MODE", "frozen"])
    assert cfg.MODEL.SOMA.PRETRAINED == os.path.relpath(weights, REPO)
    vit = build_soma_vit(cfg)  # resolves the repo-relative path, detects DINOv3, loads strictly
    assert isinstance(vit, DinoV3VisionTransformer) and vit.num_prefix_tokens == 5
    state = load_dinov3_weights(weights)
    for key in ("blocks.3.attn.q.weight", "register_tokens", "patch_embed.proj.weight"):
        torch.testing.assert_close(vit.state_dict()[key], state[key], rtol=0, atol=0)


def _vit() -> DinoV3VisionTransformer:
    return DinoV3VisionTransformer(patch_size=16, embed_dim=192, depth=4, num_heads=3)


def test_linear_probes_on_frozen_features(weights):
    data = render_probe_data(per_condition=PER_CONDITION)
    pretrained = _vit()
    pretrained.load_state_dict(load_dinov3_weights(weights))
    scores = probe_vit(pretrained, data)
    torch.manual_seed(0)
    random = probe_vit(_vit(), data)
    chance_objects, chance_conditions = 1 / 7, 1 / 5
    # measured (pretrained/README.md): source 0.87, within 0.84 / 0.80 / 0.71 / 0.82,
    # conditions 0.88 vs 0.78 random, transfer 0.64 / 0.68 / 0.62 / 0.76 vs 0.15 / 0.14 / 0.11 / 0.44
    assert scores.object_source > 4 * chance_objects
    assert min(scores.object_within.values()) > 3 * chance_objects
    assert scores.condition > 3.5 * chance_conditions
    assert scores.condition > random.condition + 0.05
    assert min(scores.object_transfer.values()) > 3 * chance_objects
    for night in ("night_sunny", "night_rainy"):
        assert random.object_transfer[night] < 2 * chance_objects
        assert scores.object_transfer[night] > random.object_transfer[night] + 0.3
    assert scores.mean_transfer > random.mean_transfer + 0.3
