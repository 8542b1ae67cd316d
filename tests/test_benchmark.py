"""Smoke tests of the benchmarks at tiny sizes: structure and sanity of the results, never speed.

Each benchmark runs once at size ``T`` with one repetition; the tests check the record layout the
CLI and ``benchmarks/RESULTS.md`` rely on, that times and throughputs are positive, and the
numbers that do not depend on the machine against independent references (numpy's SVD, parameter
counts from the architecture, AdamW's state layout, numpy's percentiles).
"""
from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.harness import (
    BENCHMARKS,
    DATA_PRESETS,
    INFER_PRESETS,
    SIZES,
    SVD_PRESETS,
    TRAIN_PRESETS,
    official_svd_loop,
    run_benchmarks,
    run_data_benchmark,
    run_infer_benchmark,
    run_svd_benchmark,
    run_train_benchmark,
)
from benchmarks.harness.measure import MemoryProbe, paired_ratio, run_interleaved, summarize
from benchmarks.harness.runner import format_markdown
from benchmarks.harness.svd import realistic_spectrum, realistic_weights
from benchmarks.harness.vit_cases import build_vit

ROOT = Path(__file__).resolve().parents[1]
RESULT_KEYS = {"benchmark", "title", "settings", "baseline", "unit", "higher_is_better", "rows",
               "goals", "notes"}
STATS_KEYS = {"median", "min", "max", "q1", "q3", "n", "samples"}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny shapes run fastest on one thread (and do not fight other processes for cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def check_record(result: dict, name: str, methods: set[str]) -> dict[str, dict]:
    assert RESULT_KEYS <= set(result)
    assert result["benchmark"] == name
    rows = {r["method"]: r for r in result["rows"]}
    assert set(rows) == methods
    assert result["baseline"] in rows
    for row in result["rows"]:
        stats = row["stats"]
        assert STATS_KEYS <= set(stats) and stats["n"] == 1
        assert stats["median"] > 0 and math.isfinite(stats["median"])
        assert stats["min"] <= stats["median"] <= stats["max"]
        assert row["ratio"] > 0 and row["ratio_min"] <= row["ratio"] <= row["ratio_max"]
    assert rows[result["baseline"]]["ratio"] == pytest.approx(1.0)
    for g in result["goals"]:
        assert {"name", "measured", "op", "target", "met"} <= set(g)
        assert g["met"] == (g["measured"] <= g["target"] if g["op"] == "<="
                            else g["measured"] >= g["target"])
    json.dumps(result)  # JSON-ready
    return rows


def test_realistic_weights_have_the_advertised_spectrum():
    shapes = [(48, 24), (24, 24), (48, 24)]
    weights = realistic_weights(shapes, seed=3, pool=2)
    plain = realistic_spectrum(24, 48, 24).numpy()
    for (out_f, in_f), w in zip(shapes, weights):
        got = np.linalg.svd(w.double().numpy(), compute_uv=False)
        assert np.linalg.norm(got) == pytest.approx(0.02 * np.sqrt(out_f * in_f), rel=1e-5)
        shape_only = got / np.linalg.norm(got) / (plain / np.linalg.norm(plain))
        assert np.all(np.abs(shape_only - 1) < 0.25)  # power law, jittered by at most 10 %
    assert not np.allclose(weights[0].numpy(), weights[2].numpy())  # same shape, new matrix


def test_official_loop_matches_numpy_minor_components():
    gen = torch.Generator().manual_seed(0)
    u = torch.linalg.qr(torch.randn(40, 20, generator=gen, dtype=torch.float64))[0]
    v = torch.linalg.qr(torch.randn(20, 20, generator=gen, dtype=torch.float64))[0]
    s = torch.cat([torch.linspace(4, 1, 17, dtype=torch.float64),
                   torch.tensor([0.1, 0.05, 0.02], dtype=torch.float64)])  # gapped minor part
    w = ((u * s) @ v.T).float()
    ((res, a, b),) = official_svd_loop([w], 3)
    uu, ss, vt = np.linalg.svd(w.double().numpy(), full_matrices=False)
    minor = (uu[:, -3:] * ss[-3:]) @ vt[-3:]
    np.testing.assert_allclose((b @ a).double().numpy(), minor, atol=1e-5)
    np.testing.assert_allclose((res + b @ a).numpy(), w.numpy(), atol=1e-6)


def test_svd_benchmark_tiny():
    result = run_svd_benchmark(SVD_PRESETS["T"], repeats=1)
    rows = check_record(result, "svd", {"official_svd_loop", "soma_d2_batched",
                                        "soma_d2_cache_miss", "soma_d2_cache_hit"})
    spec = SVD_PRESETS["T"]
    assert result["settings"]["layers"] == 6 * (spec.depth - spec.start_block)
    for row in rows.values():
        assert row["recon_max_rel_err"] < 1e-5
        assert row["speedup"] == pytest.approx(1.0 / row["ratio"])
    assert rows["soma_d2_batched"]["minor_max_rel_err"] < 1e-5
    assert rows["official_svd_loop"]["minor_max_rel_err"] < 1e-2
    assert (rows["soma_d2_cache_hit"]["minor_max_rel_err"]
            == rows["soma_d2_cache_miss"]["minor_max_rel_err"])


def test_cold_build_benchmark_tiny(tmp_path):
    """First and second build in fresh processes (ViT-S: 4 adapted blocks; the framework-free
    path, which starts fastest): the second build reads the entry the first wrote."""
    from benchmarks.harness.cold_build import cold_build_table, run_cold_build_benchmark

    result = run_cold_build_benchmark(repeats=1, work_dir=str(tmp_path), paths=("torch",),
                                      arch="vit_s")
    rows = check_record(result, "cold_build", {"torch_first", "torch_second"})
    assert result["settings"]["layers"] == 6 * (12 - 8)
    for row in rows.values():
        assert row["imports_s"] > 0 and row["load_s"] > 0 and row["build_s"] > 0
        assert row["stats"]["median"] > row["imports_s"] + row["load_s"] + row["build_s"]
    entries = list(tmp_path.glob("cache_*/decomposition-*.safetensors"))
    assert len(entries) == 1  # written by the first build, read (not rewritten) by the second
    assert [g["name"].split(":")[0] for g in result["goals"]] == ["torch"]
    assert "second build, new process" in cold_build_table(result)


def test_train_benchmark_tiny():
    spec = TRAIN_PRESETS["T"]
    result = run_train_benchmark(spec, repeats=1, steps=2)
    rows = check_record(result, "train", {"soma", "lora", "full", "frozen"})
    d, h, r, head = spec.embed_dim, 4 * spec.embed_dim, spec.rank, spec.embed_dim * 64 + 64
    per_block = 4 * (r * 2 * d + d) + (r * (d + h) + h) + (r * (h + d) + d)
    adapted = spec.depth - spec.first_adapted_block
    vit_params = sum(p.numel() for p in build_vit(spec).parameters())
    assert rows["soma"]["trainable_params"] == adapted * per_block + head
    assert rows["lora"]["trainable_params"] == rows["soma"]["trainable_params"]
    assert rows["full"]["trainable_params"] == vit_params + head
    assert rows["frozen"]["trainable_params"] == head
    n_tensors = sum(1 for p in build_vit(spec).parameters()) + 2
    # AdamW: two float32 moments per parameter and a float32 step counter per tensor, for every
    # tensor that got a gradient: all but the mask token (no masks in the forward)
    expected = 8 * (vit_params - d + head) + 4 * (n_tensors - 1)
    assert rows["full"]["optimizer_state_mib"] * 2**20 == pytest.approx(expected)
    for row in rows.values():
        assert 0 < row["peak_mem_mib"] < 4096
        assert row["mem_ratio"] > 0
    assert {g["name"] for g in result["goals"]} == {
        "SoMA step time / LoRA's", "SoMA peak memory / full fine-tuning's"}


def test_infer_benchmark_tiny():
    result = run_infer_benchmark(INFER_PRESETS["T"], repeats=1, iters=1)
    rows = check_record(result, "infer", {"plain", "plain_copy", "soma_merged", "soma_unmerged"})
    assert rows["plain"]["max_rel_diff_vs_plain"] == rows["plain_copy"]["max_rel_diff_vs_plain"] == 0
    spec = INFER_PRESETS["T"]
    adapted = 6 * (spec.depth - spec.first_adapted_block)
    assert [rows[m]["soma_layers"] for m in ("plain", "soma_merged", "soma_unmerged")] == [
        0, 0, adapted]
    assert rows["soma_merged"]["params"] == rows["plain"]["params"]
    d, h, r = spec.embed_dim, 4 * spec.embed_dim, spec.rank
    factors = (spec.depth - spec.first_adapted_block) * (4 * 2 * d + (d + h) + (h + d)) * r
    assert rows["soma_unmerged"]["params"] == rows["plain"]["params"] + factors
    assert 0 < rows["soma_merged"]["max_rel_diff_vs_plain"] < 1e-5
    assert 0 < rows["soma_unmerged"]["max_rel_diff_vs_plain"] < 1e-5


def test_data_benchmark_tiny():
    result = run_data_benchmark(DATA_PRESETS["T"], repeats=1)
    rows = check_record(result, "data", {"loader", "mapper", "train_step", "train_fed"})
    assert result["higher_is_better"] and result["unit"] == "images/s"
    assert result["settings"]["train_images"] >= 2
    assert rows["loader"]["ratio"] == pytest.approx(
        rows["loader"]["stats"]["median"] / rows["train_step"]["stats"]["median"])


def test_cli_writes_json_and_markdown(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("benchmark_cli", ROOT / "tools/benchmark.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    out_json, out_md = tmp_path / "r.json", tmp_path / "r.md"
    assert cli.main(["svd", "--size", "T", "--repeats", "1", "--json", str(out_json),
                     "--markdown", str(out_md)]) == 0
    report = json.loads(out_json.read_text())
    assert set(report) == {"meta", "results"} and list(report["results"]) == ["svd"]
    assert report["meta"]["machine"]["nproc"] >= 1
    assert "| official: torch.linalg.svd per layer (fp32)" in capsys.readouterr().out
    assert "tools/benchmark.py svd --size T" in out_md.read_text()
    assert format_markdown(report).startswith("## Command")
    assert (cli.BENCHMARKS, cli.SIZES) == (BENCHMARKS, SIZES)  # the CLI's copy, kept in sync
    assert cli.main(["svd", "--size", "T", "--repeats", "0"]) == 2
    assert "--repeats must be an int >= 1, got 0" in capsys.readouterr().err


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="unknown benchmark.*'nope'"):
        run_benchmarks(["nope"], size="T")
    with pytest.raises(ValueError, match="--size 'X'"):
        run_benchmarks(["svd"], size="X")
    with pytest.raises(ValueError, match="repeats"):
        run_benchmarks(["svd"], size="T", repeats=0)


def test_interleaving_rotates_the_order():
    calls = []
    cases = {name: (lambda n=name: calls.append(n) or 1.0) for name in "ABC"}
    samples = run_interleaved(cases, repeats=3, warmup=0)
    assert "".join(calls) == "ABCBCACAB"
    assert samples == {"A": [1.0] * 3, "B": [1.0] * 3, "C": [1.0] * 3}


def test_statistics_match_numpy():
    values = [3.0, 1.0, 4.0, 1.5, 9.0, 2.0]
    stats = summarize(values)
    assert stats["median"] == np.median(values)
    assert stats["q1"] == pytest.approx(np.percentile(values, 25))
    assert stats["q3"] == pytest.approx(np.percentile(values, 75))
    ratio = paired_ratio([2.0, 4.0, 6.0], [1.0, 1.0, 4.0])
    assert ratio == {"ratio": 4.0, "ratio_min": 1.5, "ratio_max": 4.0}
    with pytest.raises(ValueError, match="no samples"):
        summarize([])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM is Linux-only")
def test_memory_probe_sees_a_new_peak():
    probe = MemoryProbe()
    probe.reset_peak()
    before = probe.peak_bytes()
    block = torch.ones(64 * 2**20 // 4)  # 64 MiB, written
    grown = probe.peak_bytes() - before
    del block
    assert probe.method.startswith("VmHWM")
    assert 60 * 2**20 <= grown <= 80 * 2**20
