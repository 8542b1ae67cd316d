"""The on-disk decomposition cache: hits give bit-identical factors without decomposing, corrupted
or mismatched entries are detected (one warning) and recomputed, other weights miss."""
from __future__ import annotations

import copy
import logging
import os

import pytest
import torch
from soma_helpers import TinyViT

import soma_d2.soma.inject as inject_module
from soma_d2.soma import DecompositionCache, SoMAConfig, SoMALinear, inject_soma
from soma_d2.soma.cache import default_cache_dir

CONFIG = SoMAConfig(rank=3, start_block=1)


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return TinyViT()


def _factors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {f"{n}.{k}": getattr(m, k).detach().clone() for n, m in model.named_modules()
            if isinstance(m, SoMALinear) for k in ("A", "B", "weight")}


def _refuse_decomposition(*args, **kwargs):
    raise AssertionError("decompose_weights ran although the cache holds the entry")


def test_second_build_hits_and_is_bit_identical(tmp_path, monkeypatch):
    cache = DecompositionCache(tmp_path)
    base = _model()
    first = copy.deepcopy(base)
    inject_soma(first, CONFIG, cache=cache)
    assert (cache.hits, cache.misses) == (0, 1)
    assert len(list(tmp_path.glob("decomposition-*.safetensors"))) == 1
    monkeypatch.setattr(inject_module, "decompose_weights", _refuse_decomposition)
    second = copy.deepcopy(base)
    inject_soma(second, CONFIG, cache=cache)
    assert (cache.hits, cache.misses) == (1, 1)
    a, b = _factors(first), _factors(second)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_fingerprints_of_w_are_passed_on_not_recomputed(tmp_path, monkeypatch):
    # the miss computes each W fingerprint once (stored in the entry and given to the layer), a
    # hit takes them from the entry: the layers' fingerprints equal an independent computation
    import soma_d2.soma.layer as layer_module

    cache, base = DecompositionCache(tmp_path), _model()
    originals = {n: m.weight.detach().clone() for n, m in base.named_modules()
                 if isinstance(m, torch.nn.Linear)}
    passes = []
    real_pass = layer_module._rowwise_pass

    def counting_pass(*args, **kwargs):
        passes.append(kwargs.get("with_fingerprint", True))
        return real_pass(*args, **kwargs)

    monkeypatch.setattr(layer_module, "_rowwise_pass", counting_pass)
    first, second = copy.deepcopy(base), copy.deepcopy(base)
    layers = len(inject_soma(first, CONFIG, cache=cache).layers)
    assert passes.count(True) == layers and passes.count(False) == layers
    passes.clear()
    inject_soma(second, CONFIG, cache=cache)
    assert cache.hits == 1 and passes == [False] * layers
    for model in (first, second):
        for name, m in model.named_modules():
            if isinstance(m, SoMALinear):
                w = originals[name].double()
                p, q = layer_module._probe_vectors(*w.shape)
                assert m.base_fingerprint == pytest.approx(
                    [float(torch.linalg.matrix_norm(w)), float(p @ w @ q)], rel=1e-12)


def test_corrupted_entry_is_detected_and_recomputed(tmp_path, caplog):
    cache = DecompositionCache(tmp_path)
    base = _model()
    reference = copy.deepcopy(base)
    inject_soma(reference, CONFIG, cache=cache)
    (entry,) = tmp_path.glob("decomposition-*.safetensors")
    blob = bytearray(entry.read_bytes())
    blob[-20] ^= 0x5A  # flip bits inside the last stored factor
    entry.write_bytes(bytes(blob))
    again = copy.deepcopy(base)
    with caplog.at_level(logging.WARNING, logger="soma_d2.soma.cache"):
        inject_soma(again, CONFIG, cache=cache)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "fingerprint" in warnings[0].getMessage()
    assert cache.misses == 2
    a, b = _factors(reference), _factors(again)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the rewritten entry is good again: a third build hits without warnings
    caplog.clear()
    inject_soma(copy.deepcopy(base), CONFIG, cache=cache)
    assert cache.hits == 1 and not [r for r in caplog.records if r.levelno >= logging.WARNING]
    entry.write_bytes(b"not a safetensors file")
    with caplog.at_level(logging.WARNING, logger="soma_d2.soma.cache"):
        inject_soma(copy.deepcopy(base), CONFIG, cache=cache)
    assert cache.misses == 3


def test_other_weights_rank_or_mode_miss(tmp_path):
    cache = DecompositionCache(tmp_path)
    inject_soma(_model(0), CONFIG, cache=cache)
    inject_soma(_model(1), CONFIG, cache=cache)  # a different pretrained file
    inject_soma(_model(0), SoMAConfig(rank=2, start_block=1), cache=cache)
    inject_soma(_model(0), SoMAConfig(rank=3, start_block=1, init="principal"), cache=cache)
    inject_soma(_model(0), SoMAConfig(rank=3, start_block=1, target_modules=["q"]), cache=cache)
    assert (cache.hits, cache.misses) == (0, 5)
    model = _model(0)
    with torch.no_grad():
        model.blocks[1].attn.q.weight[0, 0] += 1e-6  # one element of one matrix
    inject_soma(model, CONFIG, cache=cache)
    assert cache.misses == 6
    inject_soma(_model(1), CONFIG, cache=cache)
    assert cache.hits == 1


def test_released_mode_never_uses_the_cache(tmp_path):
    cache = DecompositionCache(tmp_path)
    inject_soma(_model(), SoMAConfig(rank=3, start_block=1, init="released"), cache=cache)
    assert (cache.hits, cache.misses) == (0, 0)
    assert not list(tmp_path.iterdir())


def test_default_directory_and_test_isolation(monkeypatch, tmp_path):
    assert "soma_cache" in os.environ["SOMA_CACHE_DIR"]  # set by tests/conftest.py
    assert not str(default_cache_dir()).startswith(os.path.expanduser("~/.cache"))
    monkeypatch.delenv("SOMA_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "soma_d2"


@pytest.mark.parametrize("enabled", [True, False])
def test_backbone_config_switch(enabled):
    from soma_d2.config import build_cfg
    from soma_d2.modeling.backbone import build_soma_vit

    cfg = build_cfg("configs/test/tiny_soma_det.yaml",
                    ["MODEL.SOMA.DECOMPOSITION_CACHE", str(enabled)])
    build_soma_vit(cfg)
    entries = list(default_cache_dir().glob("decomposition-*.safetensors"))
    assert len(entries) == (1 if enabled else 0)
