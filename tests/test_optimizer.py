"""Parameter groups and optimizer construction against an independent re-implementation of the
official mmcv `custom_keys` rule, on a tiny model named like a Detectron2 SoMA model."""
from __future__ import annotations

import io
import math

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers.batch_norm import FrozenBatchNorm2d
from detectron2.layers.batch_norm import LayerNorm as D2LayerNorm
from torch import nn

from soma_d2.config import add_soma_config
from soma_d2.solver import build_optimizer, format_param_groups, get_param_groups

BASE_LR, BASE_WD = 2e-4, 0.05


class Adapted(nn.Module):
    """A SoMA-like linear: frozen residual weight, trainable factors A, B and bias."""

    def __init__(self, d: int, r: int = 2):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(d, d), requires_grad=False)
        self.bias = nn.Parameter(torch.zeros(d))
        self.A = nn.Parameter(torch.randn(r, d))
        self.B = nn.Parameter(torch.randn(d, r))


class Block(nn.Module):
    def __init__(self, d: int, trainable: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(d)
        self.attn = nn.Module()
        self.attn.q = Adapted(d)
        self.attn.proj = nn.Linear(d, d)
        if not trainable:
            self.requires_grad_(False)


class TinyDetector(nn.Module):
    def __init__(self, d: int = 8):
        super().__init__()
        self.backbone = nn.Module()
        net = nn.Module()
        net.pos_embed = nn.Parameter(torch.zeros(1, 5, d))
        net.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        net.register_tokens = nn.Parameter(torch.zeros(1, 2, d))
        net.mask_token = nn.Parameter(torch.zeros(1, d))
        net.patch_embed = nn.Conv2d(3, d, 2, 2)
        net.patch_embed.requires_grad_(False)
        net.blocks = nn.ModuleList([Block(d, trainable=False), Block(d, trainable=True)])
        net.norm = nn.LayerNorm(d)
        self.backbone.net = net
        self.backbone.simfp_2 = nn.Sequential(nn.ConvTranspose2d(d, 4, 2, 2), D2LayerNorm(4))
        self.backbone.simfp_3 = nn.Sequential(nn.Conv2d(d, 4, 1), nn.GroupNorm(2, 4))
        self.backbone.frozen_bn = FrozenBatchNorm2d(4)
        self.roi_heads = nn.Module()
        self.roi_heads.box_head = nn.Sequential(nn.Linear(16, 16), nn.BatchNorm1d(16))
        self.roi_heads.box_predictor = nn.Module()
        self.roi_heads.box_predictor.cls_score = nn.Linear(16, 3)
        self.roi_heads.box_predictor.bbox_pred = nn.Linear(16, 8)
        self.transformer = nn.Module()
        self.transformer.query_embed = nn.Embedding(4, d)
        self.transformer.level_embed = nn.Parameter(torch.zeros(4, d))
        self.transformer.out_norm = nn.Module()  # custom norm: caught by the name fallback only
        self.transformer.out_norm.gain = nn.Parameter(torch.ones(d))


def make_cfg(**solver):
    cfg = add_soma_config(get_cfg())
    cfg.SOLVER.BASE_LR = BASE_LR
    cfg.SOLVER.WEIGHT_DECAY = BASE_WD
    for k, v in solver.items():
        node, key = cfg.SOLVER, k
        if "." in k:
            sub, key = k.split(".")
            node = cfg.SOLVER[sub]
        node[key] = v
    return cfg


def mmcv_reference(names: list[str]) -> dict[str, tuple[float, float]]:
    """mmcv DefaultOptimWrapperConstructor with the official SoMA detection `custom_keys`.

    The official model names the ViT `backbone.*` and the pyramid `neck.*`; ours names them
    `backbone.net.*` and `backbone.simfp_*`, so names are mapped before applying the rule.
    """
    custom_keys = {
        "norm": dict(decay_mult=0.0),
        "query_embed": dict(lr_mult=1.0, decay_mult=0.0),
        "level_embed": dict(lr_mult=1.0, decay_mult=0.0),
        "backbone": dict(lr_mult=0.5, decay_mult=0.2),
    }
    sorted_keys = sorted(sorted(custom_keys), key=len, reverse=True)
    out = {}
    for name in names:
        mm_name = name.replace("backbone.net.", "backbone.").replace("backbone.simfp", "neck.simfp")
        lr, wd = BASE_LR, BASE_WD
        for key in sorted_keys:
            if key in mm_name:
                lr = BASE_LR * custom_keys[key].get("lr_mult", 1.0)
                wd = BASE_WD * custom_keys[key].get("decay_mult", 1.0)
                break
        out[name] = (lr, wd)
    return out


def by_name(optimizer) -> dict[str, dict]:
    out = {}
    for g in optimizer.param_groups:
        for n in g["param_names"]:
            assert n not in out, f"{n} appears in two groups"
            out[n] = g
    return out


def test_only_trainable_params_each_once():
    model = TinyDetector()
    opt = build_optimizer(make_cfg(), model)
    got = by_name(opt)
    expected = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(got) == expected
    assert "backbone.net.blocks.0.attn.q.A" not in got  # frozen block
    assert "backbone.net.blocks.1.attn.q.weight" not in got  # frozen residual
    ids = [id(p) for g in opt.param_groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(expected)
    for g in opt.param_groups:
        named = dict(model.named_parameters())
        assert all(named[n] is p for n, p in zip(g["param_names"], g["params"]))


def test_grouping_matches_official_mmcv_rule():
    model = TinyDetector()
    opt = build_optimizer(make_cfg(), model)
    got = by_name(opt)
    ref = mmcv_reference(list(got))
    # mmcv's longest-key rule lets `backbone` beat `norm`, so a *trainable* ViT norm or token would
    # get decay 0.01 there; we give them zero decay (brief). SoMA freezes ViT norms, and its
    # mask_token receives no gradient, so the trainable set of the recipe is unaffected.
    # Norms found by module type whose names lack "norm" (Sequential indices, as in Detectron2's
    # SimpleFeaturePyramid `simfp_2.1`) also get zero decay here, where mmcv's name match misses.
    deviations = {"backbone.net.norm.weight", "backbone.net.norm.bias", "backbone.net.pos_embed",
                  "backbone.net.cls_token", "backbone.net.register_tokens",
                  "backbone.net.mask_token", "backbone.net.blocks.1.norm1.weight",
                  "backbone.net.blocks.1.norm1.bias"}
    typed_norms = {"backbone.simfp_2.1.weight", "backbone.simfp_2.1.bias",
                   "backbone.simfp_3.1.weight", "backbone.simfp_3.1.bias",
                   "roi_heads.box_head.1.weight", "roi_heads.box_head.1.bias"}
    for name, g in got.items():
        lr_ref, wd_ref = ref[name]
        assert math.isclose(g["lr"], lr_ref), name
        if name in deviations:
            assert g["weight_decay"] == 0.0 and math.isclose(wd_ref, BASE_WD * 0.2), name
        elif name in typed_norms:
            assert g["weight_decay"] == 0.0 and wd_ref == BASE_WD, name
        else:
            assert math.isclose(g["weight_decay"], wd_ref, abs_tol=0.0), name
    # explicit spot checks of the recipe
    assert got["backbone.net.blocks.1.attn.q.A"]["weight_decay"] == pytest.approx(0.01)
    assert got["backbone.net.blocks.1.attn.q.bias"]["weight_decay"] == pytest.approx(0.01)
    assert got["backbone.net.blocks.1.attn.q.A"]["lr"] == pytest.approx(1e-4)
    assert got["backbone.simfp_2.0.weight"]["lr"] == BASE_LR  # pyramid is not the ViT
    assert got["backbone.simfp_2.0.bias"]["weight_decay"] == BASE_WD  # conv biases decay
    assert got["roi_heads.box_predictor.cls_score.bias"]["weight_decay"] == BASE_WD
    for n in ("backbone.simfp_2.1.weight", "backbone.simfp_3.1.bias", "roi_heads.box_head.1.weight",
              "transformer.query_embed.weight", "transformer.level_embed",
              "transformer.out_norm.gain"):
        assert got[n]["weight_decay"] == 0.0 and got[n]["lr"] == BASE_LR, n


def test_group_metadata_and_merging():
    opt = build_optimizer(make_cfg(), TinyDetector())
    labels = [g["name"] for g in opt.param_groups]
    assert sorted(labels) == sorted(["backbone", "backbone/no_decay", "head", "head/no_decay"])
    for g in opt.param_groups:
        assert g["base_lr"] == g["lr"] and g["base_weight_decay"] == g["weight_decay"]
        assert isinstance(g["param_names"], list)
        assert all(isinstance(n, str) for n in g["param_names"])
        assert len(g["param_names"]) == len(g["params"])
    keys = [(g["lr"], g["weight_decay"], g["name"]) for g in opt.param_groups]
    assert len(keys) == len(set(keys))


def test_custom_rules_longest_pattern_wins_and_overrides_backbone():
    rules = [["blocks", 0.1, 0.5], ["blocks.1.attn.q", 2.0, 3.0], ["cls_score", 10.0, 0.0],
             ["attn.q.A", 4.0, 1.0], ["attn.q.B", 5.0, 1.0]]
    opt = build_optimizer(make_cfg(CUSTOM_RULES=rules), TinyDetector())
    got = by_name(opt)
    g = got["backbone.net.blocks.1.attn.q.bias"]  # longest: "blocks.1.attn.q"
    assert (g["lr"], g["weight_decay"]) == pytest.approx((BASE_LR * 2.0, BASE_WD * 3.0))
    assert g["name"] == "custom[blocks.1.attn.q]"
    g = got["backbone.net.blocks.1.attn.q.A"]  # 15 chars, equal length: first in list wins
    assert g["lr"] == pytest.approx(BASE_LR * 2.0)
    g = got["backbone.net.blocks.1.attn.proj.weight"]  # "blocks" replaces backbone multipliers
    assert (g["lr"], g["weight_decay"]) == pytest.approx((BASE_LR * 0.1, BASE_WD * 0.5))
    g = got["backbone.net.blocks.1.norm1.weight"]  # no-decay still wins
    assert g["weight_decay"] == 0.0 and g["lr"] == pytest.approx(BASE_LR * 0.1)
    g = got["roi_heads.box_predictor.cls_score.weight"]
    assert (g["lr"], g["weight_decay"]) == pytest.approx((BASE_LR * 10.0, 0.0))
    g = got["backbone.net.pos_embed"]  # untouched by rules: backbone lr, no decay
    assert (g["lr"], g["weight_decay"]) == pytest.approx((BASE_LR * 0.5, 0.0))


@pytest.mark.parametrize("bad", [["x", 1.0], [1, 1.0, 1.0], ["", 1.0, 1.0], ["x", "a", 1.0],
                                 ["x", -1.0, 1.0]])
def test_bad_custom_rule_is_named(bad):
    with pytest.raises(ValueError, match=r"SOLVER.CUSTOM_RULES\[0\]"):
        build_optimizer(make_cfg(CUSTOM_RULES=[bad]), TinyDetector())


def test_no_decay_patterns_from_config():
    opt = build_optimizer(make_cfg(NO_DECAY_PATTERNS=["cls_score"]), TinyDetector())
    got = by_name(opt)
    assert got["roi_heads.box_predictor.cls_score.weight"]["weight_decay"] == 0.0
    assert got["roi_heads.box_predictor.bbox_pred.weight"]["weight_decay"] == BASE_WD
    # query_embed is no longer listed: it decays like any head weight
    assert got["transformer.query_embed.weight"]["weight_decay"] == BASE_WD


def test_wrapped_model_names_have_no_module_prefix(tmp_path):
    import torch.distributed as dist

    model = TinyDetector()
    plain = {n for g in build_optimizer(make_cfg(), model).param_groups for n in g["param_names"]}
    wrapped = nn.DataParallel(model)
    names = {n for g in build_optimizer(make_cfg(), wrapped).param_groups for n in g["param_names"]}
    assert names == plain
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        ddp = nn.parallel.DistributedDataParallel(model)
        opt = build_optimizer(make_cfg(), ddp)
        assert {n for g in opt.param_groups for n in g["param_names"]} == plain
    finally:
        dist.destroy_process_group()


def test_adamw_and_sgd_hyperparameters():
    opt = build_optimizer(make_cfg(EPS=1e-6, BETAS=(0.8, 0.99)), TinyDetector())
    assert type(opt) is torch.optim.AdamW
    assert all(g["eps"] == 1e-6 and g["betas"] == (0.8, 0.99) for g in opt.param_groups)
    opt = build_optimizer(make_cfg(OPTIMIZER="SGD", MOMENTUM=0.7, NESTEROV=True), TinyDetector())
    assert isinstance(opt, torch.optim.SGD)
    assert all(g["momentum"] == 0.7 and g["nesterov"] for g in opt.param_groups)


def test_unknown_optimizer_and_no_trainable_params():
    with pytest.raises(ValueError, match=r"SOLVER.OPTIMIZER='Lion'.*AdamW, SGD"):
        build_optimizer(make_cfg(OPTIMIZER="Lion"), TinyDetector())
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer(make_cfg(), TinyDetector().requires_grad_(False))
    with pytest.raises(ValueError, match="BIAS_LR_FACTOR"):
        build_optimizer(make_cfg(BIAS_LR_FACTOR=2.0), TinyDetector())


def test_full_model_clipping_uses_total_norm():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    cfg = make_cfg(OPTIMIZER="SGD", MOMENTUM=0.0, BASE_LR=1.0, WEIGHT_DECAY=0.0,
                   **{"CLIP_GRADIENTS.ENABLED": True, "CLIP_GRADIENTS.CLIP_TYPE": "full_model",
                      "CLIP_GRADIENTS.CLIP_VALUE": 0.5, "CLIP_GRADIENTS.NORM_TYPE": 2.0})
    opt = build_optimizer(cfg, model)
    (model(torch.randn(8, 4)) * 100).sum().backward()
    params = list(model.parameters())
    grads = [p.grad.clone() for p in params]
    before = [p.detach().clone() for p in params]
    total = torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads]))
    assert total > 0.5
    opt.step()
    updates = [b - p.detach() for b, p in zip(before, params)]
    # SGD with lr 1: the update is the clipped gradient; one global factor scales all tensors
    expected = [g * (0.5 / (total + 1e-6)) for g in grads]
    for u, e in zip(updates, expected):
        torch.testing.assert_close(u, e, rtol=1e-5, atol=1e-7)
    assert torch.linalg.vector_norm(torch.cat([u.flatten() for u in updates])) == pytest.approx(
        0.5, rel=1e-5)
    with pytest.raises(ValueError, match="CLIP_TYPE='bogus'"):
        build_optimizer(make_cfg(**{"CLIP_GRADIENTS.ENABLED": True,
                                    "CLIP_GRADIENTS.CLIP_TYPE": "bogus"}), model)


def test_format_table_counts():
    model = TinyDetector()
    opt = build_optimizer(make_cfg(), model)
    text = format_param_groups(opt, model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    assert f"trainable: {trainable:,} of {total:,} params ({100 * trainable / total:.2f}%)" in text
    for g in opt.param_groups:
        numel = sum(p.numel() for p in g["params"])
        row = [r for r in text.splitlines() if r.startswith(f"| {g['name']} ")]
        assert len(row) == 1 and f"{numel:,}" in row[0] and str(len(g["params"])) in row[0]


def test_optimizer_state_loads_with_weights_only():
    model = TinyDetector()
    opt = build_optimizer(make_cfg(), model)
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    opt2 = build_optimizer(make_cfg(), model)
    opt2.load_state_dict(state)
    assert [g["param_names"] for g in opt2.param_groups] == [
        g["param_names"] for g in opt.param_groups]


def test_get_param_groups_defaults_apply_no_multipliers():
    groups = get_param_groups(TinyDetector(), base_lr=1.0, weight_decay=0.1)
    labels = {g["name"]: (g["lr"], g["weight_decay"]) for g in groups}
    assert labels["backbone"] == (1.0, pytest.approx(0.1))
    assert labels["head/no_decay"] == (1.0, 0.0)
