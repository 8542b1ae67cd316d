"""`tools/demo.py --compare`: every method with the same data, schedule and seeds, one DG table
with a row per run, a mean ± std summary per method and a bar chart; and the repository-relative
resolution of the demo's shipped foundation weights."""
from __future__ import annotations

import json
import math
import os
import sys

import pytest

from soma_d2.data.synthetic import generate_synthetic_dwd
from soma_d2.engine.compare import METHODS, run_name, summarise
from soma_d2.evaluation.dg_table import DGTable
from soma_d2.utils import REPO_ROOT, resolve_repo_path

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs", "test", "tiny_soma_det.yaml")


def test_summary_is_mean_and_sample_std_over_seeds():
    rows = {run_name("soma", 0): {"a": 10.0, "b": 4.0, "c": 6.0},
            run_name("soma", 1): {"a": 20.0, "b": 8.0, "c": 2.0},
            run_name("lora", 0): {"a": 1.0, "b": 1.0, "c": 1.0},
            run_name("lora", 1): {"a": 3.0, "b": 1.0, "c": 5.0}}
    table = DGTable("bbox/AP50", "a", ["a", "b", "c"], rows)
    summary = summarise(table, ["soma", "lora"], [0, 1])
    assert summary.mean["soma"]["a"] == 15.0
    assert math.isclose(summary.std["soma"]["a"], math.sqrt(50.0))  # sample std of (10, 20)
    assert summary.mean["soma"]["mean (targets)"] == 5.0  # (5 + 5) / 2
    assert summary.std["soma"]["mean (targets)"] == 0.0
    assert summary.mean["lora"]["c"] == 3.0
    text = summary.to_markdown()
    assert "| soma | 15.0 ± 7.1 | 6.0 ± 2.8 | 4.0 ± 2.8 | 5.0 ± 0.0 |" in text
    with pytest.raises(KeyError, match="principal"):
        summarise(table, ["principal"], [0])


def test_repo_relative_paths_resolve_from_anywhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shipped = os.path.join("configs", "demo", "synthetic_soma.yaml")
    assert REPO_ROOT == REPO
    assert resolve_repo_path(shipped) == os.path.join(REPO, shipped)
    assert resolve_repo_path("", REPO) == ""
    assert resolve_repo_path("no/such/file.pth", REPO) == "no/such/file.pth"


def test_demo_compare_writes_one_table_a_summary_and_a_chart(tmp_path, capsys):
    data = tmp_path / "data"
    generate_synthetic_dwd(str(data), images_per_domain=6, image_size=128, seed=0, progress=False)
    (data / ".complete").write_text("6\n")
    sys.path.insert(0, os.path.join(REPO, "tools"))
    import demo

    out = tmp_path / "compare"
    demo.main(["--compare", "--seeds", "2", "--methods", "soma", "frozen", "--config-file", TINY,
               "--data-dir", str(data), "--output-dir", str(out), "--max-iter", "2",
               "DATASETS.DWD_PREFIX", "tiny", "SOLVER.CHECKPOINT_PERIOD", "100"])
    printed = capsys.readouterr().out
    with open(out / "dg_results.json") as f:
        table = json.load(f)
    runs = [r["run"] for r in table["rows"]]
    assert sorted(runs) == sorted(run_name(m, s) for m in ("soma", "frozen") for s in (0, 1))
    assert table["source"] == "daytime_clear" and "night_sunny" in table["domains"]
    with open(out / "comparison.json") as f:
        summary = json.load(f)
    assert summary["methods"] == ["soma", "frozen"] and summary["seeds"] == [0, 1]
    soma = [r["values"]["night_sunny"] for r in table["rows"] if r["run"].startswith("soma")]
    assert math.isclose(summary["mean"]["soma"]["night_sunny"], sum(soma) / 2, abs_tol=1e-9)
    png = (out / "comparison.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert "| soma |" in printed and "| frozen |" in printed and "±" in printed
    # finished runs are reused, not retrained
    demo.main(["--compare", "--seeds", "1", "--methods", "frozen", "--config-file", TINY,
               "--data-dir", str(data), "--output-dir", str(out), "--max-iter", "2",
               "DATASETS.DWD_PREFIX", "tiny"])
    assert "reusing the finished run" in capsys.readouterr().out


def test_all_five_methods_are_compared_by_default():
    assert METHODS == ("soma", "lora", "principal", "full_finetune", "frozen")
