"""SoMALinear: exact initialization per mode, merge/unmerge/to_linear, dtypes and state dicts."""
import math

import numpy as np
import pytest
import torch
from soma_helpers import gapped_spectrum, matrix_with_spectrum, realistic_spectrum
from torch import nn

from soma_d2.soma import SoMALinear


def linear_with(weight: torch.Tensor, seed: int = 0) -> nn.Linear:
    lin = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        lin.weight.copy_(weight)
        lin.bias.copy_(torch.randn(weight.shape[0], generator=torch.Generator().manual_seed(seed)))
    return lin


def numpy_reconstruction(w: torch.Tensor, rank: int, which: str) -> np.ndarray:
    u, s, vh = np.linalg.svd(w.double().numpy(), full_matrices=False)
    sl = slice(0, rank) if which == "principal" else slice(len(s) - rank, len(s))
    return (u[:, sl] * s[sl]) @ vh[sl]


def rel(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))


@pytest.mark.parametrize("shape", [(48, 64), (96, 48), (96, 192)])
@pytest.mark.parametrize("which", ["minor", "principal"])
def test_initial_product_is_the_numpy_rank_r_reconstruction(shape, which):
    rank = 6
    gen = torch.Generator().manual_seed(0)
    w = matrix_with_spectrum(*shape, gapped_spectrum(min(shape), rank, which), gen)
    layer = SoMALinear.from_linear(linear_with(w), rank, alpha=12, init=which)
    assert layer.scaling == 2.0 and layer.A.shape == (rank, shape[1])
    assert layer.B.shape == (shape[0], rank)
    product = (layer.scaling * layer.B @ layer.A).detach()
    assert rel(product, numpy_reconstruction(w, rank, which)) <= 1e-5
    # the residual plus the product gives W back to float32 rounding
    assert rel(layer.weight + product, w) <= 1e-6
    assert not layer.weight.requires_grad and layer.A.requires_grad and layer.B.requires_grad


def test_factor_balance_follows_the_formula():
    """B = U_r sqrt(S_r/s), A = sqrt(S_r/s) V_r^T: columns of B and rows of A share norms."""
    gen = torch.Generator().manual_seed(1)
    w = matrix_with_spectrum(48, 64, gapped_spectrum(48, 4, "minor"), gen)
    layer = SoMALinear.from_linear(linear_with(w), 4, alpha=2.0)
    s_ref = np.linalg.svd(w.double().numpy(), compute_uv=False)[-4:]
    np.testing.assert_allclose(layer.B.detach().norm(dim=0).pow(2).numpy(),
                               s_ref / layer.scaling, rtol=1e-5)
    np.testing.assert_allclose(layer.A.detach().norm(dim=1).pow(2).numpy(),
                               s_ref / layer.scaling, rtol=1e-5)


def test_lora_mode_starts_from_zero_b_and_kaiming_a():
    w = torch.randn(48, 64)
    lin = linear_with(w)
    torch.manual_seed(5)
    layer = SoMALinear.from_linear(lin, 8, init="lora")
    assert torch.equal(layer.B, torch.zeros_like(layer.B))
    assert torch.equal(layer.weight, w)
    torch.manual_seed(5)
    ref = torch.empty(8, 64)
    nn.init.kaiming_uniform_(ref, a=math.sqrt(5))
    assert torch.equal(layer.A.detach(), ref)


@torch.no_grad()
def test_released_mode_keeps_full_w_and_random_minor_factors():
    w = torch.randn(48, 64)
    lin = linear_with(w)
    torch.manual_seed(123)
    layer = SoMALinear.from_linear(lin, 4, init="released")
    assert torch.equal(layer.weight, w)
    torch.manual_seed(123)
    rand = torch.empty(48, 64)
    nn.init.kaiming_uniform_(rand, a=math.sqrt(5))
    product = (layer.scaling * layer.B @ layer.A).detach()
    assert rel(product, numpy_reconstruction(rand, 4, "minor")) <= 1e-5
    x = torch.randn(3, 64)
    assert not torch.allclose(layer(x), lin(x), atol=1e-4)  # differs from pretrained at step 0


@pytest.mark.parametrize("init", ["minor", "principal", "lora"])
@pytest.mark.parametrize("kind", ["decay", "repeated", "tiny", "gaussian"])
def test_step_zero_output_equals_pretrained(init, kind):
    gen = torch.Generator().manual_seed(2)
    w = matrix_with_spectrum(96, 48, realistic_spectrum(48, kind, gen), gen)
    lin = linear_with(w)
    layer = SoMALinear.from_linear(lin, 8, init=init)
    x = torch.randn(16, 48, generator=gen)
    with torch.no_grad():
        ref, out = lin(x), layer(x)
    assert float((out - ref).abs().max() / ref.abs().max()) <= 1e-5


def perturb(layer: SoMALinear) -> None:
    gen = torch.Generator().manual_seed(9)
    with torch.no_grad():
        layer.A.add_(0.3 * torch.randn(layer.A.shape, generator=gen))
        layer.B.add_(0.3 * torch.randn(layer.B.shape, generator=gen))


@torch.no_grad()
def test_merge_unmerge_and_to_linear_preserve_outputs():
    gen = torch.Generator().manual_seed(3)
    lin = linear_with(torch.randn(64, 48, generator=gen))
    layer = SoMALinear.from_linear(lin, 8)
    perturb(layer)
    x = torch.randn(10, 48, generator=gen)
    ref = layer(x).detach()
    # independent reference: the formula with explicit matmuls in float64
    formula = (x.double() @ layer.weight.double().T + layer.bias.double()
               + layer.scaling * (x.double() @ layer.A.double().T) @ layer.B.double().T)
    assert float((ref.double() - formula).abs().max() / formula.abs().max()) <= 1e-6
    weight_before = layer.weight.detach().clone()
    layer.merge()
    assert layer.merged
    assert float((layer(x) - ref).abs().max() / ref.abs().max()) <= 1e-5
    assert torch.allclose(layer.state_dict()["weight"], weight_before, atol=1e-6)
    layer.merge()  # idempotent
    assert float((layer(x) - ref).abs().max() / ref.abs().max()) <= 1e-5
    plain = layer.to_linear()
    assert type(plain) is nn.Linear
    assert float((plain(x) - ref).abs().max() / ref.abs().max()) <= 1e-5
    layer.unmerge()
    assert not layer.merged and torch.allclose(layer.weight, weight_before, atol=1e-6)
    assert float((layer(x) - ref).abs().max() / ref.abs().max()) <= 1e-5
    plain = layer.to_linear()
    assert float((plain(x) - ref).abs().max() / ref.abs().max()) <= 1e-5
    assert plain.weight.requires_grad == layer.A.requires_grad


@torch.no_grad()
def test_dropout_only_on_adapter_path():
    lin = linear_with(torch.randn(32, 48))
    layer = SoMALinear.from_linear(lin, 4, dropout=0.5)
    perturb(layer)
    x = torch.randn(6, 48)
    layer.eval()
    ref = layer(x)
    layer.train()
    torch.manual_seed(0)
    out = layer(x)
    base = torch.nn.functional.linear(x, layer.weight, layer.bias)
    mask = (torch.manual_seed(0), torch.nn.functional.dropout(torch.ones_like(x), 0.5))[1]
    expected = base + layer.scaling * ((x * mask) @ layer.A.T) @ layer.B.T
    assert torch.allclose(out, expected, atol=1e-5)
    assert not torch.allclose(out, ref, atol=1e-3)


@torch.no_grad()
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_other_float_dtypes_keep_factors_in_weight_dtype(dtype):
    gen = torch.Generator().manual_seed(4)
    w = torch.randn(48, 64, generator=gen)
    lin = linear_with(w).to(dtype)
    layer = SoMALinear.from_linear(lin, 4)
    assert layer.A.dtype == layer.B.dtype == layer.weight.dtype == dtype
    x = torch.randn(5, 64, generator=gen).to(dtype)
    ref = lin(x).double()
    tol = {torch.float64: 1e-12, torch.float16: 5e-3, torch.bfloat16: 3e-2}[dtype]
    assert float((layer(x).double() - ref).abs().max() / ref.abs().max()) <= tol


@torch.no_grad()
def test_autocast_matches_float32():
    gen = torch.Generator().manual_seed(5)
    lin = linear_with(torch.randn(48, 64, generator=gen))
    layer = SoMALinear.from_linear(lin, 4)
    x = torch.randn(5, 64, generator=gen)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
    assert out.dtype == torch.bfloat16
    ref = lin(x)
    assert float((out.float() - ref).abs().max() / ref.abs().max()) <= 3e-2


@torch.no_grad()
def test_state_dict_keys_and_round_trip_into_a_bare_layer():
    lin = linear_with(torch.randn(32, 48))
    layer = SoMALinear.from_linear(lin, 4)
    perturb(layer)
    assert list(layer.state_dict()) == ["weight", "bias", "A", "B"]
    bare = SoMALinear(48, 32, 4)
    bare.load_state_dict(layer.state_dict())
    x = torch.randn(3, 48)
    assert torch.equal(bare(x), layer(x))


def test_loading_a_plain_linear_weight_is_refused():
    layer = SoMALinear.from_linear(linear_with(torch.randn(32, 48)), 4)
    with pytest.raises(RuntimeError, match="plain linear weight.*residual"):
        layer.load_state_dict(nn.Linear(48, 32).state_dict(), strict=False)


def test_layer_bad_inputs():
    with pytest.raises(ValueError, match=r"rank must be an int in \[1, 31\].*got 32"):
        SoMALinear.from_linear(nn.Linear(48, 32), 32)
    with pytest.raises(ValueError, match="got 0"):
        SoMALinear(48, 32, 0)
    with pytest.raises(ValueError, match="init must be one of"):
        SoMALinear(48, 32, 4, init="pissa")
    with pytest.raises(TypeError, match="expects nn.Linear"):
        SoMALinear.from_linear(nn.Conv1d(4, 4, 1), 2)


def test_product_fingerprint_equals_fingerprint_of_explicit_product():
    from soma_d2.soma.layer import fingerprint, product_fingerprint

    gen = torch.Generator().manual_seed(6)
    b, a = torch.randn(48, 4, generator=gen), torch.randn(4, 64, generator=gen)
    expected = fingerprint(2.0 * b.double() @ a.double())
    np.testing.assert_allclose(product_fingerprint(b, a, 2.0), expected, rtol=1e-10)
    signs = torch.tensor([1.0, -1.0, 1.0, -1.0])
    flipped = product_fingerprint(b * signs, a * signs[:, None], 2.0)
    np.testing.assert_allclose(flipped, expected, rtol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_residual_and_fingerprint_over_row_blocks_match_whole_matrix_float64(dtype, monkeypatch):
    """The residual and base fingerprint are built block by block (here 600 rows in blocks of 256
    rows: 2 full blocks and a partial one); both must equal the whole-matrix float64 computation
    rounded once."""
    from soma_d2.soma import layer as layer_module
    from soma_d2.soma.layer import _probe_vectors

    monkeypatch.setattr(layer_module, "_BLOCK_ELEMENTS", 256 * 40)

    gen = torch.Generator().manual_seed(7)
    linear = nn.Linear(40, 600).to(dtype)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(600, 40, generator=gen))
    layer = SoMALinear.from_linear(linear, 4)
    w64 = linear.weight.detach().double()
    expected = torch.addmm(w64, layer.B.double(), layer.A.double(), alpha=-layer.scaling)
    assert torch.equal(layer.weight, expected.to(dtype))
    p, q = (v.numpy() for v in _probe_vectors(600, 40))
    w = w64.numpy()
    np.testing.assert_allclose(layer.base_fingerprint, [np.linalg.norm(w), p @ w @ q],
                               rtol=1e-12)
