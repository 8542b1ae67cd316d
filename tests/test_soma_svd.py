"""Batched partial SVD against numpy.linalg.svd and per-layer torch.linalg.svd."""
import numpy as np
import pytest
import torch
from soma_helpers import gapped_spectrum, matrix_with_spectrum, realistic_spectrum

from soma_d2.soma import decompose_weights

SHAPES = [(48, 64), (64, 48), (96, 192), (192, 96), (64, 64)]


def numpy_reconstruction(w: torch.Tensor, rank: int, which: str) -> np.ndarray:
    u, s, vh = np.linalg.svd(w.double().numpy(), full_matrices=False)
    sl = slice(0, rank) if which == "principal" else slice(len(s) - rank, len(s))
    return (u[:, sl] * s[sl]) @ vh[sl]


def rel(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("method", ["eigh-scipy", "eigh-torch", "svd"])
@pytest.mark.parametrize("which", ["minor", "principal"])
def test_triplets_match_numpy_svd(method, which):
    gen = torch.Generator().manual_seed(0)
    rank = 6
    weights = [matrix_with_spectrum(o, i, gapped_spectrum(min(o, i), rank, which), gen)
               for o, i in SHAPES]
    trips = decompose_weights(weights, rank, which, method)
    for w, t in zip(weights, trips, strict=True):
        ref_s = np.linalg.svd(w.double().numpy(), compute_uv=False)
        ref_s = ref_s[:rank] if which == "principal" else ref_s[-rank:]
        assert t.U.dtype == torch.float64 and t.U.shape == (w.shape[0], rank)
        assert t.V.shape == (w.shape[1], rank)
        np.testing.assert_allclose(t.S.numpy(), ref_s, rtol=1e-9, atol=1e-12)
        eye = np.eye(rank)
        np.testing.assert_allclose(t.U.T @ t.U, eye, atol=1e-10)
        np.testing.assert_allclose(t.V.T @ t.V, eye, atol=1e-10)
        assert rel(t.reconstruction(), numpy_reconstruction(w, rank, which)) < 1e-9


@pytest.mark.parametrize("kind", ["decay", "repeated", "tiny", "gaussian"])
def test_batched_equals_per_layer_torch_svd_on_realistic_spectra(kind):
    """Per-layer float64 torch.linalg.svd is the reference; spectra without a designed gap."""
    gen = torch.Generator().manual_seed(1)
    weights = [matrix_with_spectrum(o, i, realistic_spectrum(min(o, i), kind, gen), gen)
               for o, i in SHAPES for _ in range(2)]
    rank = 5 if kind != "repeated" else 4  # plateaus of 4: keep the r/r+1 boundary unique
    for which in ("minor", "principal"):
        batched = decompose_weights(weights, rank, which)
        for w, t in zip(weights, batched, strict=True):
            u, s, vh = torch.linalg.svd(w.double(), full_matrices=False)
            sl = slice(0, rank) if which == "principal" else slice(s.numel() - rank, None)
            ref = (u[:, sl] * s[sl]) @ vh[sl]
            recon = t.reconstruction()
            scale = w.double().norm()
            assert float((recon - ref).norm() / scale) < 1e-7
            # residuals W - recon agree as well, relative to W
            assert float(((w.double() - recon) - (w.double() - ref)).norm() / scale) < 1e-7
            if kind != "tiny" or which == "principal":
                assert float((recon - ref).norm() / ref.norm()) < 1e-5


def test_zero_singular_values_do_not_blow_up():
    gen = torch.Generator().manual_seed(2)
    spec = torch.cat([torch.logspace(0, -1, 40, dtype=torch.float64),
                      torch.zeros(8, dtype=torch.float64)])
    w = matrix_with_spectrum(48, 96, spec, gen)
    t = decompose_weights([w], 4, "minor")[0]
    assert torch.isfinite(t.U).all() and torch.isfinite(t.V).all()
    assert float(t.S.max()) < 1e-6
    np.testing.assert_allclose(t.U.T @ t.U, np.eye(4), atol=1e-10)


def test_mixed_shapes_and_ranks_keep_input_order():
    gen = torch.Generator().manual_seed(3)
    weights = [torch.randn(o, i, generator=gen) for o, i in [(48, 64), (64, 48), (48, 64)]]
    ranks = [3, 5, 7]
    trips = decompose_weights(weights, ranks, "minor", workers=2)
    for w, r, t in zip(weights, ranks, trips, strict=True):
        assert t.S.shape == (r,)
        assert rel(t.reconstruction(), numpy_reconstruction(w, r, "minor")) < 1e-9


def test_float16_and_bfloat16_inputs_are_decomposed_in_float64():
    gen = torch.Generator().manual_seed(4)
    w = torch.randn(48, 64, generator=gen)
    for dtype in (torch.float16, torch.bfloat16):
        wl = w.to(dtype)
        t = decompose_weights([wl], 4, "minor")[0]
        assert rel(t.reconstruction(), numpy_reconstruction(wl.float(), 4, "minor")) < 1e-9


def test_bad_inputs():
    w = torch.randn(8, 6)
    with pytest.raises(ValueError, match="which must be one of"):
        decompose_weights([w], 2, "middle")
    with pytest.raises(ValueError, match="method must be one of"):
        decompose_weights([w], 2, method="lanczos")
    with pytest.raises(ValueError, match=r"rank of weight #0 .* \[1, 6\], got 7"):
        decompose_weights([w], 7)
    with pytest.raises(TypeError, match="floating"):
        decompose_weights([torch.ones(8, 6, dtype=torch.int64)], 2)
    with pytest.raises(ValueError, match="NaN"):
        decompose_weights([torch.full((8, 6), float("nan"))], 2)
    with pytest.raises(ValueError, match="2 ranks for 1"):
        decompose_weights([w], [2, 3])
    with pytest.raises(ValueError, match="workers"):
        decompose_weights([w], 2, workers=0)


def test_parallel_single_threaded_workers_match_one_worker():
    """The CPU default runs one solve per torch thread with per-thread BLAS settings of scipy's
    OpenBLAS; the results must not depend on how the work is split."""
    from soma_d2.soma.svd import _openblas_local_threads

    assert _openblas_local_threads() is not None  # the wheel's OpenBLAS offers per-thread control
    gen = torch.Generator().manual_seed(5)
    weights = [torch.randn(96, 64, generator=gen) for _ in range(5)]
    one = decompose_weights(weights, 4, "minor", method="eigh-scipy", workers=1)
    three = decompose_weights(weights, 4, "minor", method="eigh-scipy", workers=3)
    for a, b, w in zip(one, three, weights, strict=True):
        assert rel(a.reconstruction(), b.reconstruction()) < 1e-12
        assert rel(b.reconstruction(), numpy_reconstruction(w, 4, "minor")) < 1e-9
