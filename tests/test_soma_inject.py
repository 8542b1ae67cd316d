"""inject_soma / merge_soma on a tiny ViT-like model: outputs, freeze policy, report, errors."""
import math

import numpy as np
import pytest
import torch
from soma_helpers import clone, inputs, make_model, max_rel_diff, train_steps
from torch import nn

from soma_d2.soma import SoMAConfig, SoMALinear, SoMAReport, inject_soma, merge_soma

TARGETS = ("attn.q", "attn.k", "attn.v", "attn.proj", "mlp.fc1", "mlp.fc2")


def soma_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, SoMALinear)]


@pytest.mark.parametrize("init", ["minor", "principal", "lora"])
@pytest.mark.parametrize("method", ["auto", "eigh-torch", "svd"])
@torch.no_grad()
def test_outputs_unchanged_right_after_injection(init, method):
    model = make_model()
    x = inputs()
    ref = model(x)
    report = inject_soma(model, SoMAConfig(rank=4, init=init), method=method)
    assert len(report.layers) == 4 * 6
    assert max_rel_diff(model(x), ref) <= 1e-5


def test_only_blocks_from_start_block_are_adapted_and_trainable():
    model = make_model()
    cfg = SoMAConfig(rank=4, start_block=2, extra_trainable=["mask_token"])
    report = inject_soma(model, cfg)
    assert soma_names(model) == [f"blocks.{b}.{t}" for b in (2, 3) for t in TARGETS]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    expected = {f"blocks.{b}.{t}.{k}" for b in (2, 3) for t in TARGETS for k in ("A", "B", "bias")}
    assert trainable == expected | {"mask_token"}
    assert not any(n.startswith(("blocks.0.", "blocks.1.")) for n in trainable)
    assert sorted(trainable) == report.trainable_names
    count = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert report.trainable_params == count
    assert report.total_params == sum(p.numel() for p in model.parameters())
    assert report.config is cfg
    assert isinstance(model.patch_embed, nn.Linear) and isinstance(model.head, nn.Linear)


@pytest.mark.parametrize(
    ("bias", "expected_biases"),
    [("none", set()), ("adapted", "adapted"), ("all", "all")],
)
def test_bias_policies(bias, expected_biases):
    model = make_model(depth=2)
    all_biases = {n for n, _ in model.named_parameters() if n.endswith(".bias")}
    inject_soma(model, SoMAConfig(rank=4, start_block=1, bias=bias))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    biases = {n for n in trainable if n.endswith(".bias")}
    if expected_biases == "adapted":
        expected_biases = {f"blocks.1.{t}.bias" for t in TARGETS}
    elif expected_biases == "all":
        expected_biases = all_biases
        assert "blocks.0.norm1.bias" in biases and "head.bias" in biases
    assert biases == expected_biases
    assert {n for n in trainable if not n.endswith(".bias")} == {
        f"blocks.1.{t}.{k}" for t in TARGETS for k in ("A", "B")}


def test_rank_per_block_and_regex_targets():
    model = make_model()
    cfg = SoMAConfig(rank=4, rank_per_block={1: 8, 2: 0}, alpha=8,
                     target_modules=r"blocks\.\d+\.mlp\.fc[12]")
    report = inject_soma(model, cfg)
    ranks = {info.name: info.rank for info in report.layers}
    assert ranks == {"blocks.0.mlp.fc1": 4, "blocks.0.mlp.fc2": 4, "blocks.1.mlp.fc1": 8,
                     "blocks.1.mlp.fc2": 8, "blocks.3.mlp.fc1": 4, "blocks.3.mlp.fc2": 4}
    assert model.blocks[1].mlp.fc1.scaling == 1.0 and model.blocks[0].mlp.fc1.scaling == 2.0


def test_report_table_is_readable():
    model = make_model(depth=2)
    report = inject_soma(model, SoMAConfig(rank=4, start_block=1))
    assert isinstance(report, SoMAReport)
    text = str(report)
    assert "blocks.1.mlp.fc1" in text and "96 x 48" in text and "blocks.0." not in text
    assert "6 layers adapted" in text
    assert f"({report.trainable_percent:.3f}%)" in text
    assert 0 < report.trainable_percent < 100


@pytest.mark.parametrize("init", ["minor", "principal", "lora"])
def test_merge_paths_preserve_outputs_after_training(init):
    model = make_model()
    inject_soma(model, SoMAConfig(rank=4, init=init, extra_trainable=["mask_token"]))
    x = inputs()
    a_before = model.blocks[3].mlp.fc2.A.detach().clone()
    b_before = model.blocks[3].mlp.fc2.B.detach().clone()
    train_steps(model, x)
    assert not torch.equal(model.blocks[3].mlp.fc2.A, a_before)
    assert not torch.equal(model.blocks[3].mlp.fc2.B, b_before)
    with torch.no_grad():
        ref = model(x)
        for m in model.modules():
            if isinstance(m, SoMALinear):
                m.merge()
        assert max_rel_diff(model(x), ref) <= 1e-5
        for m in model.modules():
            if isinstance(m, SoMALinear):
                m.unmerge()
        assert max_rel_diff(model(x), ref) <= 1e-5
        merged = merge_soma(clone(model))
        assert not any(isinstance(m, SoMALinear) for m in merged.modules())
        assert not hasattr(merged, "_soma_config")
        assert max_rel_diff(merged(x), ref) <= 1e-5
        plain = make_model()
        assert list(merged.state_dict()) == list(plain.state_dict())


def test_released_mode_is_reproducible_and_keeps_w():
    base = make_model()
    model = clone(base)
    torch.manual_seed(7)
    inject_soma(model, SoMAConfig(rank=4, init="released", start_block=3))
    q = model.blocks[3].attn.q
    assert torch.equal(q.weight, base.blocks[3].attn.q.weight)
    # the first drawn matrix belongs to the first target in module order: blocks.3.attn.q
    torch.manual_seed(7)
    rand = torch.empty(48, 48)
    nn.init.kaiming_uniform_(rand, a=math.sqrt(5))
    u, s, vh = np.linalg.svd(rand.double().numpy())
    ref = (u[:, -4:] * s[-4:]) @ vh[-4:]
    product = (q.scaling * q.B @ q.A).detach().double().numpy()
    assert np.linalg.norm(product - ref) / np.linalg.norm(ref) <= 1e-5
    again = clone(base)
    torch.manual_seed(7)
    inject_soma(again, SoMAConfig(rank=4, init="released", start_block=3))
    assert torch.equal(again.blocks[3].mlp.fc2.A, model.blocks[3].mlp.fc2.A)


def test_no_match_lists_available_names():
    model = make_model(depth=2)
    with pytest.raises(ValueError, match=r"no nn.Linear matched.*blocks.0.attn.q"):
        inject_soma(model, SoMAConfig(rank=4, target_modules=["qkv"]))
    with pytest.raises(ValueError, match=r"blocks >= 5.*block indices found: \[0, 1\]"):
        inject_soma(model, SoMAConfig(rank=4, start_block=5))


def test_rank_too_large_names_module_and_value():
    model = make_model(depth=1)
    with pytest.raises(ValueError, match=r"rank 48 for module 'blocks.0.attn.q'.*\[1, 47\]"):
        inject_soma(model, SoMAConfig(rank=48))
    assert not any(isinstance(m, SoMALinear) for m in model.modules())


def test_other_bad_inputs():
    model = make_model(depth=1)
    with pytest.raises(TypeError, match="expects a SoMAConfig"):
        inject_soma(model, {"rank": 4})
    with pytest.raises(ValueError, match="extra_trainable entry 'cls_token' matches no"):
        inject_soma(model, SoMAConfig(rank=4, extra_trainable=["cls_token"]))
    assert not any(isinstance(m, SoMALinear) for m in model.modules())
    inject_soma(model, SoMAConfig(rank=4))
    with pytest.raises(ValueError, match="already contains SoMALinear"):
        inject_soma(model, SoMAConfig(rank=4))


def test_non_floating_weight_is_rejected():
    model = make_model(depth=1)
    lin = model.blocks[0].attn.q
    lin.weight = nn.Parameter(torch.zeros(48, 48, dtype=torch.int32), requires_grad=False)
    with pytest.raises(TypeError, match="'blocks.0.attn.q' has weight dtype torch.int32"):
        inject_soma(model, SoMAConfig(rank=4))


def test_multihead_attention_out_proj_is_refused():
    class Holder(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList([nn.MultiheadAttention(16, 2)])

    with pytest.raises(ValueError, match="MultiheadAttention"):
        inject_soma(Holder(), SoMAConfig(rank=2, target_modules=["out_proj"]))
