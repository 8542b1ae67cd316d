"""What the docs and packaging state matches what runs: the pinned lint version is the one
installed, the torch floor in setup.py admits the installed torch, and every output the README's
"What a run writes" table names is one a real run writes (tests/test_entry_points.py runs it)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read(name: str) -> str:
    with open(os.path.join(REPO, name)) as f:
        return f.read()


def test_ruff_pin_is_the_installed_ruff():
    pinned = re.search(r"^ruff==([\d.]+)", _read("requirements-dev.txt"), re.M)
    assert pinned, "requirements-dev.txt must pin ruff (make lint must mean the same everywhere)"
    ruff = os.path.join(os.path.dirname(sys.executable), "ruff")
    ruff = ruff if os.path.exists(ruff) else shutil.which("ruff")
    assert ruff, "ruff is a dev requirement"
    version = subprocess.run([ruff, "--version"], capture_output=True, text=True).stdout.split()[1]
    assert version == pinned.group(1)
    assert "$(wildcard projects)" in _read("Makefile")


def test_setup_torch_floor_admits_the_installed_torch_and_matches_the_readme():
    floor = re.search(r'"torch>=(\d+)\.(\d+)"', _read("setup.py"))
    assert floor
    major, minor = (int(v) for v in torch.__version__.split(".")[:2])
    assert (major, minor) >= (int(floor.group(1)), int(floor.group(2)))
    assert f"torch >= {floor.group(1)}.{floor.group(2)}" in _read("README.md")
    assert hasattr(torch.amp, "GradScaler")  # the API that sets the floor (torch 2.3)


def test_readme_output_table_and_no_hue_claim():
    readme = _read("README.md")
    table = readme[readme.index("### What a run writes"):readme.index("### The demos")]
    for name in ("metrics.json", "log.txt", "events.out.tfevents", "inference/", "dg_results.json",
                 "dg_results.md", "predictions_", "model_final_adapter.pth", "config.yaml"):
        assert name in table, name
    assert "benchmarks/RESULTS.md" in readme[readme.index("## Performance"):]
    config = _read("soma_d2/config.py")
    assert "no hue" in config and "saturation/hue" not in config
