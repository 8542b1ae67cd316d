"""The faster build paths of issue 24 compute exactly what the plain ones did: the ViT built on the
meta device and given the loaded tensors equals one initialised and then loaded; layers built on
parallel single-threaded workers (and a cache entry verified that way) are bit-identical to layers
built one after another; torch's thread count is restored afterwards, also after an error."""
from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from soma_d2.checkpoint import load_dinov2_weights
from soma_d2.config import build_cfg
from soma_d2.modeling.backbone import (
    DinoViTBackboneNet,
    _vit_kwargs,
    apply_soma_mode,
    build_soma_vit,
)
from soma_d2.pretrain.official_layout import to_official_state_dict
from soma_d2.soma import DecompositionCache, SoMAConfig, SoMALinear, decompose_weights, inject_soma
from soma_d2.soma.threads import map_single_threaded, torch_threads

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(REPO, "configs", "demo", "synthetic_soma.yaml")
PRETRAINED = os.path.join(REPO, "pretrained", "synthetic_vit_d192_l4.pth")


def _plain_build(cfg) -> nn.Module:
    """The build before issue 24: random init, then the pretrained tensors copied in."""
    vit = DinoViTBackboneNet(**_vit_kwargs(cfg))
    state = load_dinov2_weights(PRETRAINED, patch_size=cfg.MODEL.VIT.PATCH_SIZE,
                                image_size=cfg.MODEL.VIT.IMG_SIZE)
    vit.load_state_dict(state, strict=False)
    apply_soma_mode(vit, cfg)
    return vit


@pytest.mark.parametrize("mode", ["soma", "frozen"])
def test_meta_built_vit_equals_the_initialised_and_loaded_one(mode):
    cfg = build_cfg(DEMO, ["MODEL.SOMA.MODE", mode, "MODEL.SOMA.DECOMPOSITION_CACHE", "False"])
    fast, plain = build_soma_vit(cfg), _plain_build(cfg)
    a, b = fast.state_dict(), plain.state_dict()
    assert list(a) == list(b)
    for key in a:
        assert a[key].dtype == b[key].dtype == torch.float32 and a[key].device.type == "cpu"
        assert torch.equal(a[key], b[key]), key
    assert {n: p.requires_grad for n, p in fast.named_parameters()} == \
        {n: p.requires_grad for n, p in plain.named_parameters()}
    x = torch.randn(1, 3, 64, 64)
    fast.eval(), plain.eval()
    with torch.no_grad():
        assert torch.equal(fast(x)["block3"], plain(x)["block3"])


def test_a_half_precision_file_gives_float32_parameters(tmp_path):
    state = load_dinov2_weights(PRETRAINED)
    half = {k: v.half() for k, v in to_official_state_dict(state).items() if k != "mask_token"}
    path = str(tmp_path / "half.pth")
    torch.save(half, path)
    cfg = build_cfg(DEMO, ["MODEL.SOMA.PRETRAINED", path, "MODEL.SOMA.MODE", "frozen"])
    vit = build_soma_vit(cfg)
    assert {p.dtype for p in vit.parameters()} == {torch.float32}
    assert not any(p.is_meta for p in vit.parameters())
    assert torch.equal(vit.mask_token, torch.zeros_like(vit.mask_token))  # absent: zero


class _Blocks(nn.Module):
    def __init__(self, depth: int = 3, dim: int = 48):
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.ModuleDict({"attn": nn.ModuleDict({"q": nn.Linear(dim, dim)}),
                           "mlp": nn.ModuleDict({"fc1": nn.Linear(dim, 2 * dim)})})
            for _ in range(depth))


@pytest.mark.parametrize("init", ["minor", "principal"])
def test_parallel_layer_build_is_bit_identical_to_one_by_one(init, tmp_path):
    torch.manual_seed(0)
    model = _Blocks()
    reference = {n: (m.weight.detach().clone(), m.bias.detach().clone())
                 for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    config = SoMAConfig(rank=4, alpha=8.0, start_block=0, init=init,
                        target_modules=["attn.q", "mlp.fc1"])
    threads = torch.get_num_threads()
    with torch_threads(2):
        inject_soma(model, config, cache=DecompositionCache(tmp_path))
        assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == threads
    which = "principal" if init == "principal" else "minor"
    for name, (w, b) in reference.items():
        layer = model.get_submodule(name)
        trip = decompose_weights([w], 4, which)[0]
        one = SoMALinear.from_linear(_linear(w, b), 4, 8.0, init, triplets=trip)
        for key, value in one.state_dict().items():
            assert torch.equal(layer.state_dict()[key], value), (name, key)
        assert layer.base_fingerprint == one.base_fingerprint
        assert layer.init_fingerprint == one.init_fingerprint
    # a second model from the filled cache (verified on parallel workers) is the same again
    again = _Blocks()
    again.load_state_dict(_state_from(reference))
    inject_soma(again, config, cache=DecompositionCache(tmp_path))
    for key, value in model.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key


def _linear(w: torch.Tensor, b: torch.Tensor) -> nn.Linear:
    layer = nn.Linear(w.shape[1], w.shape[0])
    with torch.no_grad():
        layer.weight.copy_(w)
        layer.bias.copy_(b)
    return layer


def _state_from(reference: dict) -> dict:
    state = {}
    for name, (w, b) in reference.items():
        state[f"{name}.weight"], state[f"{name}.bias"] = w, b
    return state


def test_map_single_threaded_keeps_order_and_restores_threads_after_an_error():
    threads = torch.get_num_threads()
    seen = []

    def work(i: int) -> int:
        seen.append(torch.get_num_threads())
        if i == 5:
            raise RuntimeError("boom at 5")
        return i * i

    assert map_single_threaded(lambda i: i * i, range(9), workers=3) == [i * i for i in range(9)]
    with pytest.raises(RuntimeError, match="boom at 5"):
        map_single_threaded(work, range(9), workers=3)
    assert set(seen) == {1} and torch.get_num_threads() == threads
