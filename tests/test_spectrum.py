"""The spectrum analysis (soma_d2.soma.spectrum, tools/analyze_spectrum.py) against numpy's SVD."""
from __future__ import annotations

import json
import runpy
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from vit_helpers import TINY_DET, nudged_tiny_detector

from soma_d2.soma.spectrum import layer_spectrum

ROOT = Path(__file__).resolve().parents[1]


def _numpy_reference(w: np.ndarray, d: np.ndarray, r: int) -> dict:
    """Shares from full (square) numpy bases, so the null-space part is computed, not inferred."""
    u, s, vt = np.linalg.svd(w, full_matrices=True)
    k = len(s)
    groups = {"principal": slice(0, r), "middle": slice(r, k - r), "minor": slice(k - r, k)}
    total = np.sum(d ** 2)
    right, left = d @ vt.T, u.T @ d
    ref = {"s": s, "minor_energy": np.sum(s[-r:] ** 2) / np.sum(s ** 2),
           "input": {g: np.sum(right[:, sl] ** 2) / total for g, sl in groups.items()},
           "output": {g: np.sum(left[sl] ** 2) / total for g, sl in groups.items()},
           "two": {g: np.sum((u.T @ d @ vt.T)[sl, sl] ** 2) / total for g, sl in groups.items()}}
    if w.shape[1] > k:
        ref["input"]["null"] = np.sum(right[:, k:] ** 2) / total
    if w.shape[0] > k:
        ref["output"]["null"] = np.sum(left[k:] ** 2) / total
    return ref


@pytest.mark.parametrize("shape", [(24, 40), (40, 24), (32, 32)])
def test_layer_spectrum_matches_numpy(shape):
    rng = np.random.default_rng(0)
    w = rng.standard_normal(shape) * np.logspace(0, -2, shape[1])
    d = 0.01 * rng.standard_normal(shape)
    got = layer_spectrum(torch.from_numpy(w).float(), 4, torch.from_numpy(w + d).float())
    w32 = torch.from_numpy(w).float().double().numpy()
    d32 = torch.from_numpy(w + d).float().double().numpy() - w32
    ref = _numpy_reference(w32, d32, 4)
    np.testing.assert_allclose(got["singular_values"], ref["s"], rtol=1e-10, atol=1e-12)
    assert got["minor_energy_share"] == pytest.approx(ref["minor_energy"], rel=1e-9)
    for side, key in (("input_side", "input"), ("output_side", "output"), ("two_sided", "two")):
        assert set(got["update"][side]) == set(ref[key])
        for g, value in ref[key].items():
            assert got["update"][side][g] == pytest.approx(value, rel=1e-8, abs=1e-12), (side, g)
    assert sum(got["update"]["input_side"].values()) == pytest.approx(1.0)


def _timm_file(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = timm.create_model("vit_small_patch14_dinov2", pretrained=False, img_size=112,
                              embed_dim=64, depth=4, num_heads=2)
    path = tmp_path / "dinov2_tiny.pth"
    torch.save(model.state_dict(), path)
    return path


def test_tool_on_pretrained_and_fine_tuned(tmp_path, capsys):
    pretrained = _timm_file(tmp_path)
    tool = runpy.run_path(str(ROOT / "tools/analyze_spectrum.py"))["main"]
    out = tmp_path / "pre"
    tool(["--pretrained", str(pretrained), "--rank", "4", "--output-dir", str(out)])
    assert "[24/24] blocks.3.mlp.fc2" in capsys.readouterr().err  # progress lines
    data = json.loads((out / "spectrum.json").read_text())
    assert len(data["layers"]) == 4 * 6 and data["rank"] == 4
    assert {p.name for p in out.glob("*.png")} == {"spectra.png", "minor_energy.png"}
    raw = torch.load(pretrained)
    q = raw["blocks.1.attn.qkv.weight"][:64].double().numpy()  # timm fuses q, k, v
    s = np.linalg.svd(q, compute_uv=False)
    np.testing.assert_allclose(data["layers"]["blocks.1.attn.q"]["singular_values"], s,
                               rtol=1e-10)
    assert data["layers"]["blocks.1.attn.q"]["minor_energy_share"] == pytest.approx(
        np.sum(s[-4:] ** 2) / np.sum(s ** 2), rel=1e-9)

    model, opts, weights = nudged_tiny_detector(pretrained, tmp_path)
    out = tmp_path / "tuned"
    tool(["--config-file", TINY_DET, "--weights", str(weights), "--output-dir", str(out), *opts])
    data = json.loads((out / "spectrum.json").read_text())
    assert data["rank"] == 4 and (out / "update_subspaces.png").is_file()
    assert data["layers"]["blocks.1.mlp.fc1"]["update"]["frobenius"] == 0.0  # frozen block
    layer = model.backbone.net.blocks[2].mlp.fc2
    tuned = layer.merged_weight().double().numpy()
    w = raw["blocks.2.mlp.fc2.weight"].double().numpy()
    ref = _numpy_reference(w, tuned - w, 4)
    got = data["layers"]["blocks.2.mlp.fc2"]["update"]
    for g, value in ref["input"].items():
        assert got["input_side"][g] == pytest.approx(value, rel=1e-6, abs=1e-9)
    for g, value in ref["output"].items():
        assert got["output_side"][g] == pytest.approx(value, rel=1e-6, abs=1e-9)
