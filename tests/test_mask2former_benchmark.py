"""Smoke test of the Mask2Former training-step benchmark at the tiny size (through the harness)."""
from __future__ import annotations

from benchmarks.harness import run_benchmarks
from benchmarks.harness.runner import format_tables


def test_mask2former_benchmark_runs_at_tiny_size():
    report = run_benchmarks(["mask2former"], size="T", repeats=1)
    result = report["results"]["mask2former"]
    rows = {r["method"]: r for r in result["rows"]}
    assert set(rows) == {"soma", "full"} and rows["full"]["ratio"] == 1.0
    assert rows["soma"]["trainable_params"] < rows["full"]["trainable_params"]
    for r in rows.values():
        assert 0 < r["loss_share"] < 1 and r["peak_mem_mib"] > 0 and r["stats"]["median"] > 0
    assert "criterion share" in format_tables(report)
