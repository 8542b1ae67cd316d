"""inject_soma on models without numbered blocks (`block_pattern=None`), as PEFT's LoRA selects.

The selection is checked against an independent statement of PEFT's rule (a list entry matches a
module whose full name equals it or ends with "." + entry; a string is `re.fullmatch`-ed against
the full name; only linear layers), the factors against a float64 SVD of each weight.
"""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from torch import nn

from soma_d2.soma import (
    SoMAConfig,
    SoMALinear,
    adapter_state_dict,
    inject_soma,
    load_adapter_state_dict,
    merge_soma,
)


class Custom(nn.Module):
    """A model of named parts, no `blocks.N.`: names that PEFT's rule must tell apart."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.ModuleDict({
            "fc1": nn.Linear(12, 24), "fc2": nn.Linear(24, 12), "xfc1": nn.Linear(12, 12)})
        self.decoder = nn.Sequential(nn.Linear(12, 16), nn.GELU(), nn.Linear(16, 12))
        self.norm = nn.LayerNorm(12)
        self.fc1 = nn.Linear(12, 10)  # top-level "fc1" also matches the suffix rule
        self.head = nn.Linear(10, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.encoder
        x = e["xfc1"](x) + e["fc2"](torch.relu(e["fc1"](x)))
        x = self.norm(x + self.decoder(x))
        return self.head(torch.relu(self.fc1(x)))


def peft_rule(model: nn.Module, targets) -> list[str]:
    """PEFT LoRA's `check_target_module_exists`, restated: which linear layers get adapters."""
    out = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        if isinstance(targets, str):
            hit = re.fullmatch(targets, name) is not None
        else:
            hit = any(name == t or name.endswith("." + t) for t in targets)
        if hit:
            out.append(name)
    return out


def make(seed: int = 0) -> Custom:
    torch.manual_seed(seed)
    return Custom()


@pytest.mark.parametrize("targets", [["fc1", "fc2"], ["encoder.fc1", "decoder.2"], ["0", "2"],
                                     r"decoder\.\d|encoder\.x?fc1"])
def test_selection_is_peft_s_rule(targets):
    model = make()
    expected = peft_rule(model, targets)
    assert expected  # every case adapts something
    report = inject_soma(model, SoMAConfig(rank=2, target_modules=targets, block_pattern=None))
    adapted = [n for n, m in model.named_modules() if isinstance(m, SoMALinear)]
    assert adapted == expected == [info.name for info in report.layers]
    assert all(info.block == -1 and info.rank == 2 for info in report.layers)
    assert "every matching linear" in str(report)


def test_step0_function_factors_freeze_and_merge():
    model, reference = make(), make()
    x = torch.randn(5, 12, generator=torch.Generator().manual_seed(1))
    weights = {n: m.weight.detach().double().numpy().copy()
               for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    inject_soma(model, SoMAConfig(rank=3, alpha=3.0, target_modules=["fc1", "fc2"],
                                  block_pattern=None))
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=1e-5, atol=1e-5)
    for name in ("encoder.fc1", "encoder.fc2", "fc1"):
        layer = model.get_submodule(name)
        u, s, vt = np.linalg.svd(weights[name], full_matrices=False)  # float64 reference
        minor = (u[:, -3:] * s[-3:]) @ vt[-3:]
        got = (layer.B.detach().double() @ layer.A.detach().double()).numpy()
        np.testing.assert_allclose(got, minor, atol=1e-5 * np.abs(weights[name]).max())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"{m}.{k}" for m in ("encoder.fc1", "encoder.fc2", "fc1")
                         for k in ("A", "B", "bias")}
    # train a little, then the adapter file round-trips and the merge is exact
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
    state = adapter_state_dict(model)
    assert state["config"]["block_pattern"] is None
    fresh = make()
    inject_soma(fresh, SoMAConfig.from_dict(state["config"]))
    load_adapter_state_dict(fresh, state)
    with torch.no_grad():
        trained = model(x)
        torch.testing.assert_close(fresh(x), trained)
        merge_soma(model)
        assert not any(isinstance(m, SoMALinear) for m in model.modules())
        torch.testing.assert_close(model(x), trained, rtol=1e-5, atol=1e-5)


def test_block_pattern_none_refuses_block_settings_and_explains_no_match():
    with pytest.raises(ValueError, match="start_block=3 needs a block_pattern"):
        SoMAConfig(rank=2, block_pattern=None, start_block=3)
    with pytest.raises(ValueError, match="rank_per_block needs a block_pattern"):
        SoMAConfig(rank=2, block_pattern=None, rank_per_block={0: 1})
    with pytest.raises(ValueError, match=r"no nn.Linear matched .*block_pattern=None.*'encoder"):
        inject_soma(make(), SoMAConfig(rank=2, target_modules=["qkv"], block_pattern=None))
    # the default still needs numbered blocks, and says so
    with pytest.raises(ValueError, match="block indices found: none"):
        inject_soma(make(), SoMAConfig(rank=2, target_modules=["fc1"]))
