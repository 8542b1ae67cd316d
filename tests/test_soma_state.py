"""Adapter-only checkpoints: round trip onto the original weights, size, and refusals."""
import pytest
import torch
from soma_helpers import clone, inputs, make_model, max_rel_diff, train_steps

from soma_d2.soma import (
    SoMAConfig,
    SoMALinear,
    adapter_state_dict,
    inject_soma,
    load_adapter_state_dict,
)

CFG = {"rank": 4, "start_block": 1, "extra_trainable": ["mask_token"]}


def trained(init: str = "minor"):
    base = make_model()
    model = clone(base)
    inject_soma(model, SoMAConfig(init=init, **CFG))
    train_steps(model, inputs())
    return base, model


def save_and_load(state, path):
    torch.save(state, path)
    return torch.load(path, weights_only=True)


@pytest.mark.parametrize("init", ["minor", "principal", "lora", "released"])
def test_round_trip_onto_fresh_model_from_original_weights(init, tmp_path):
    base, model = trained(init)
    x = inputs(seed=3)
    with torch.no_grad():
        ref = model(x)
    state = save_and_load(adapter_state_dict(model), tmp_path / "adapter.pth")
    fresh = clone(base)
    inject_soma(fresh, SoMAConfig.from_dict(state["config"]))
    with torch.no_grad():
        assert max_rel_diff(fresh(x), ref) > 1e-3  # training did change the function
    load_adapter_state_dict(fresh, state)
    with torch.no_grad():
        assert max_rel_diff(fresh(x), ref) <= 1e-5


def test_state_is_small_and_holds_no_residual(tmp_path):
    _, model = trained()
    state = adapter_state_dict(model)
    tensors = [e[k] for e in state["layers"].values() for k in ("A", "B")]
    tensors += list(state["trainable"].values())
    saved = sum(t.numel() for t in tensors)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert saved == trainable
    assert saved < 0.2 * sum(p.numel() for p in model.parameters())
    assert set(state["trainable"]) == {"mask_token"} | {
        f"blocks.{b}.{t}.bias" for b in (1, 2, 3)
        for t in ("attn.q", "attn.k", "attn.v", "attn.proj", "mlp.fc1", "mlp.fc2")}
    weights = {tuple(m.weight.shape) for m in model.modules() if isinstance(m, SoMALinear)}
    assert not any(tuple(t.shape) in weights for t in tensors)
    path = tmp_path / "adapter.pth"
    torch.save(state, path)
    full = tmp_path / "full.pth"
    torch.save(model.state_dict(), full)
    assert path.stat().st_size < 0.3 * full.stat().st_size


def test_merging_factors_onto_original_w_would_be_wrong():
    """The DESIGN pitfall, shown: W + s B A differs from W_res + s B A by s B0 A0."""
    base, model = trained()
    layer = model.blocks[2].mlp.fc1
    original = base.blocks[2].mlp.fc1.weight
    with torch.no_grad():
        naive = original + layer.delta_weight()
        right = layer.merged_weight()
        init_product = original - layer.weight
    assert torch.allclose(naive - right, init_product, atol=1e-6)
    assert float(init_product.norm()) > 1e-3


def test_loading_onto_other_base_weights_is_refused():
    _, model = trained()
    state = adapter_state_dict(model)
    other = make_model(seed=5)
    inject_soma(other, SoMAConfig(**CFG))
    before = other.blocks[1].attn.q.A.detach().clone()
    with pytest.raises(ValueError, match="different pretrained weight"):
        load_adapter_state_dict(other, state)
    assert torch.equal(other.blocks[1].attn.q.A, before)  # nothing written


def test_loading_with_another_config_or_shape_is_refused():
    _, model = trained()
    state = adapter_state_dict(model)
    other_rank = make_model()
    inject_soma(other_rank, SoMAConfig(rank=8, start_block=1, extra_trainable=["mask_token"]))
    with pytest.raises(ValueError, match="another SoMA config.*rank: saved 4 vs model 8"):
        load_adapter_state_dict(other_rank, state)
    wider = make_model(dim=64, hidden=128)
    inject_soma(wider, SoMAConfig(**CFG))
    with pytest.raises(ValueError, match=r"'blocks.1.attn.q'.A has shape \(4, 48\).*\(4, 64\)"):
        load_adapter_state_dict(wider, state)
    deeper = make_model(depth=5)
    inject_soma(deeper, SoMAConfig(**CFG))
    with pytest.raises(ValueError, match="adapted layers differ.*blocks.4"):
        load_adapter_state_dict(deeper, state)


def test_loading_into_a_model_without_adapters_says_how():
    _, model = trained()
    state = adapter_state_dict(model)
    with pytest.raises(ValueError, match="inject_soma.*from_dict"):
        load_adapter_state_dict(make_model(), state)
    with pytest.raises(ValueError, match="not a SoMA adapter state"):
        load_adapter_state_dict(model, model.state_dict())
    with pytest.raises(ValueError, match="no SoMA adapters"):
        adapter_state_dict(make_model())


def test_tampered_initial_product_is_detected():
    _, model = trained()
    state = adapter_state_dict(model)
    fresh = make_model()
    inject_soma(fresh, SoMAConfig(**CFG))
    entry = state["layers"]["blocks.2.mlp.fc2"]
    entry["init_fingerprint"] = [v * 1.5 for v in entry["init_fingerprint"]]
    with pytest.raises(ValueError, match="'blocks.2.mlp.fc2'.*s\\*B0@A0 differs"):
        load_adapter_state_dict(fresh, state)
    load_adapter_state_dict(fresh, state, check_base=False)
    assert torch.equal(fresh.blocks[2].mlp.fc2.A, model.blocks[2].mlp.fc2.A.detach())


def test_fingerprints_agree_across_decomposition_methods():
    """A checkpoint made with the batched solver loads where the reference SVD was used."""
    _, model = trained()
    state = adapter_state_dict(model)
    fresh = make_model()
    inject_soma(fresh, SoMAConfig(**CFG), method="svd")
    load_adapter_state_dict(fresh, state)
    x = inputs(seed=4)
    with torch.no_grad():
        assert max_rel_diff(fresh(x), model(x)) <= 1e-5
