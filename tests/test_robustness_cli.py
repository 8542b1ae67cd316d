"""Robustness evaluation through tools/train_net.py --eval-only --num-gpus 2 (two gloo processes
sharding every corrupted pass) prints and writes the table of a single-process evaluation."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from soma_d2.checkpoint.checkpointer import SoMACheckpointer
from soma_d2.config import build_cfg
from soma_d2.data import register_dwd
from soma_d2.data.synthetic import generate_synthetic_dwd
from soma_d2.engine.setup import evaluate_only
from soma_d2.engine.trainer import SoMATrainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs", "test", "tiny_soma_det.yaml")


def test_eval_only_with_two_processes_writes_the_single_process_table(tmp_path):
    data_root = str(tmp_path / "data")
    generate_synthetic_dwd(data_root, images_per_domain=4, image_size=96, seed=0, progress=False)
    register_dwd(data_root, prefix="tiny")
    opts = ["DATASETS.DWD_ROOT", data_root, "DATASETS.TEST", "('tiny_night_sunny',)",
            "TEST.DG.RUN_NAME", "tiny", "DATASETS.TEST_CORRUPTIONS", "('fog', 'gaussian_noise')",
            "DATASETS.TEST_CORRUPTION_SEVERITIES", "(2,)"]
    # weights saved once: without them each rank would build its own random model (seed + rank)
    model = SoMATrainer.build_model(build_cfg(TINY, opts))
    SoMACheckpointer(model, str(tmp_path)).save("weights")
    weights = str(tmp_path / "weights.pth")
    single = str(tmp_path / "single")
    evaluate_only(build_cfg(TINY, [*opts, "OUTPUT_DIR", single, "MODEL.WEIGHTS", weights]))
    table = json.load(open(os.path.join(single, "robustness_results.json")))
    entry = table["runs"]["tiny"]["tiny_night_sunny"]
    assert set(entry["scores"]) == {"fog", "gaussian_noise"} and entry["metric"] == "bbox/AP50"
    assert {"clean", "mPC", "rPC"} <= set(entry)

    ddp = str(tmp_path / "ddp")
    cmd = [sys.executable, os.path.join(REPO, "tools", "train_net.py"), "--config-file", TINY,
           "--eval-only", "--num-gpus", "2", *opts, "OUTPUT_DIR", ddp, "MODEL.WEIGHTS", weights]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=400, cwd=REPO)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "Robustness results" in log and "ETA" in log and "mPC" in log
    assert json.load(open(os.path.join(ddp, "robustness_results.json"))) == table
