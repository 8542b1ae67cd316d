"""tools/gpu_check.py: without CUDA it stops at once with a clear message; its parts (training
steps through the real trainer, the decomposition comparison) run on CPU, so that on a GPU
machine only the CUDA specifics are new."""
from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "tools", "gpu_check.py")


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check_tool", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_without_cuda_exits_with_a_clear_message():
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, SCRIPT, "--skip-benchmarks"], capture_output=True,
                          text=True, timeout=120, cwd=REPO, env=env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "no CUDA device is visible" in proc.stderr and "NVIDIA GPU" in proc.stderr


def test_config_list_resolves_existing_files(gpu_check):
    args = gpu_check.parse_args(["--extra-config", "x.yaml"])
    configs = gpu_check.training_configs(args)
    assert configs[:2] == [gpu_check.TINY_DET, gpu_check.TINY_SEG] and configs[-1] == "x.yaml"
    assert len(configs) == 5  # a ViT-L detection and a ViT-L segmentation config exist
    assert all(os.path.isfile(os.path.join(REPO, c)) for c in configs[:-1])
    assert gpu_check.training_configs(gpu_check.parse_args(["--skip-large"])) == configs[:2]


@pytest.mark.parametrize("config", ["TINY_DET", "TINY_SEG"])
def test_training_step_check_runs_the_trainer(gpu_check, config, tmp_path):
    entry = gpu_check.training_step_check(getattr(gpu_check, config), None, str(tmp_path), 2,
                                          device="cpu")
    assert entry["ok"] and len(entry["losses"]) == 2
    assert all(math.isfinite(v) for v in entry["losses"]) and entry["trainer"] == "SimpleTrainer"
    assert "SimpleTrainer" in gpu_check.format_entry(entry)


def test_decomposition_check_compares_two_paths(gpu_check):
    shapes = gpu_check.vit_target_shapes(dim=48, hidden=96, blocks=2)
    assert len(shapes) == 12
    entry = gpu_check.decomposition_check("cpu", "cpu", rank=4, shapes=shapes, checked=3,
                                          method="eigh-torch", reference_method="eigh-scipy")
    assert entry["ok"] and entry["agreement"] < 1e-8 and entry["matrices"] == 12
    assert all(v < 1e-8 for v in entry["error_vs_fp64_svd"].values())
    assert "max rel difference" in gpu_check.format_entry(entry)
    failing = gpu_check.run_check(lambda: 1 / 0, name="boom")
    assert not failing["ok"] and "ZeroDivisionError" in gpu_check.format_entry(failing)
