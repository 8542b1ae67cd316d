"""tools/train_net.py end to end on CPU: training writes lr and annealed weight decay to
metrics.json, checkpoints and an adapter file; --eval-only reproduces the DG table; --resume
continues with the lr/decay of an uninterrupted run; two gloo processes end with equal weights."""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess

import pytest
import torch
import train_net_helpers as helpers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs", "test", "tiny_soma_det.yaml")


@pytest.fixture(scope="module")
def data_root(synthetic_dwd_root) -> str:
    return synthetic_dwd_root


def run_train_net(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return helpers.run_train_net(TINY, *args, timeout=timeout)


def read_metrics(out: str) -> dict[int, dict]:
    return helpers.metric_rows(out, "lr")


@pytest.fixture(scope="module")
def trained(data_root, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("run"))
    return helpers.train_run(TINY, "DATASETS.DWD_ROOT", data_root, out, timeout=300)


def test_training_writes_metrics_checkpoints_and_tables(trained):
    rows = read_metrics(trained)
    assert sorted(rows) == [0, 1, 2, 3]
    base, end, max_iter = 0.05, 1e-5, 4
    for it, row in rows.items():
        # the hook sets the decay before step `it`; the main group is the head (base 0.05)
        expected = end + (base - end) * 0.5 * (1 + math.cos(math.pi * it / max_iter))
        assert row["weight_decay"] == pytest.approx(expected, rel=1e-9)
        assert row["lr"] > 0
    for name in ("model_0000001.pth", "model_0000003.pth", "model_final.pth",
                 "model_final_adapter.pth", "dg_results.json", "dg_results.md", "last_checkpoint"):
        assert os.path.isfile(os.path.join(trained, name)), name
    full = os.path.getsize(os.path.join(trained, "model_final.pth"))
    adapter = os.path.getsize(os.path.join(trained, "model_final_adapter.pth"))
    assert adapter < full
    table = json.load(open(os.path.join(trained, "dg_results.json")))
    assert "daytime_clear" in json.dumps(table) and "night_sunny" in json.dumps(table)


@pytest.mark.parametrize("weights", ["model_final.pth", "model_final_adapter.pth"])
def test_eval_only_reproduces_the_final_evaluation(weights, trained, data_root, tmp_path):
    # the adapter file works too: the tiny config has no PRETRAINED file, and the seed makes the
    # random "foundation" ViT identical
    before = json.load(open(os.path.join(trained, "dg_results.json")))
    out = str(tmp_path / "eval")
    after = helpers.eval_only_table(TINY, "DATASETS.DWD_ROOT", data_root, trained, out, weights,
                                    timeout=300)
    assert after == before


def test_resume_continues_with_the_same_lr_and_decay(trained, data_root, tmp_path):
    out = str(tmp_path / "resumed")
    os.makedirs(out)
    shutil.copy(os.path.join(trained, "model_0000001.pth"), out)
    with open(os.path.join(out, "last_checkpoint"), "w") as f:
        f.write("model_0000001.pth")
    run_train_net("--resume", "DATASETS.DWD_ROOT", data_root, "OUTPUT_DIR", out)
    full, resumed = read_metrics(trained), read_metrics(out)
    assert sorted(resumed) == [2, 3]
    for it in (2, 3):
        assert resumed[it]["lr"] == full[it]["lr"]
        assert resumed[it]["weight_decay"] == full[it]["weight_decay"]


def test_two_gloo_processes_agree_on_final_weights(data_root, tmp_path):
    out = str(tmp_path / "ddp")
    proc = run_train_net("--num-gpus", "2", "DATASETS.DWD_ROOT", data_root, "OUTPUT_DIR", out,
                         "SOLVER.MAX_ITER", "2", "TEST.EVAL_PERIOD", "0", "DATASETS.TEST", "()",
                         timeout=400)
    log = open(os.path.join(out, "log.txt")).read() + proc.stdout + proc.stderr
    assert "All 2 ranks hold identical trainable weights" in log
    state = torch.load(os.path.join(out, "model_final.pth"), weights_only=True)["model"]
    assert any(k.endswith(".A") for k in state)
