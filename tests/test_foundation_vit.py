"""The shipped foundation ViT (pretrained/): its bytes are the recorded ones, it loads through the
public DINOv2 loader into the demo's ViT, and its frozen features are useful where a randomly
initialised ViT's are not: a linear probe tells object classes apart in unseen conditions
(trained on clear-day objects only) and tells the conditions apart."""
from __future__ import annotations

import hashlib
import json
import os

import pytest
import torch

from soma_d2.checkpoint import load_dinov2_weights
from soma_d2.checkpoint.dinov2 import detect_dinov2_layout, read_weight_file
from soma_d2.config import build_cfg
from soma_d2.modeling.backbone import build_soma_vit
from soma_d2.modeling.vit import DinoVisionTransformer
from soma_d2.pretrain.probe import probe_vit, render_probe_data

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECORD = os.path.join(REPO, "pretrained", "synthetic_vit_d192_l4.json")
DEMO = os.path.join(REPO, "configs", "demo", "synthetic_soma.yaml")


@pytest.fixture(scope="module")
def record() -> dict:
    with open(RECORD) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def weights(record) -> str:
    return os.path.join(REPO, record["file"])


def test_shipped_file_matches_its_recorded_hash_and_command(record, weights):
    digest = hashlib.sha256(open(weights, "rb").read()).hexdigest()
    assert digest == record["sha256"]
    assert os.path.getsize(weights) < 25 * 2**20
    assert record["command"].startswith("python tools/pretrain_synthetic_vit.py")
    assert f"--output {record['file']}" in record["command"]


def test_shipped_file_is_official_layout_and_loads_into_the_demo_vit(weights):
    raw, _ = read_weight_file(weights)
    assert detect_dinov2_layout(raw) == "official"
    assert raw["blocks.0.attn.qkv.weight"].shape == (3 * 192, 192)
    cfg = build_cfg(DEMO, [])
    assert cfg.MODEL.SOMA.PRETRAINED == os.path.relpath(weights, REPO)
    state = load_dinov2_weights(weights, patch_size=16, image_size=cfg.MODEL.VIT.IMG_SIZE)
    cfg.defrost()
    cfg.MODEL.SOMA.MODE = "frozen"
    vit = build_soma_vit(cfg)  # resolves the repo-relative path and loads strictly
    for key in ("blocks.3.attn.q.weight", "pos_embed", "patch_embed.proj.weight"):
        torch.testing.assert_close(vit.state_dict()[key], state[key], rtol=0, atol=0)


def _vit() -> DinoVisionTransformer:
    return DinoVisionTransformer(img_size=256, patch_size=16, embed_dim=192, depth=4,
                                 num_heads=3)


def test_linear_probes_find_classes_across_conditions_and_the_conditions(weights):
    data = render_probe_data(per_condition=16)
    pretrained = _vit()
    pretrained.load_state_dict(load_dinov2_weights(weights))
    torch.manual_seed(0)
    scores = probe_vit(pretrained, data)
    random = probe_vit(_vit(), data)
    chance_objects, chance_conditions = 1 / 7, 1 / 5
    assert scores.object_targets > 3 * chance_objects
    assert scores.object_targets > random.object_targets + 0.15
    assert scores.object_source > 0.75
    assert scores.condition > 4 * chance_conditions
