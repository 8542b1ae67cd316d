"""tools/merge_adapter.py and tools/export_adapter.py on a tiny run trained with an EMA.

The exported weights must be the EMA (what evaluation scored) unless --no-ema asks for the live
ones; the tools say which. Expected values are formed here from the raw checkpoint tensors
(residual + s * B @ A), independently of the merge code; the merged model, evaluated with
MODEL.SOMA.MODE frozen, reproduces the table of the training run.
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import subprocess
import sys

import pytest
import torch

from soma_d2.data.synthetic import generate_synthetic_dwd

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs", "test", "tiny_soma_det.yaml")
LAYER = "backbone.net.blocks.3.mlp.fc1"
EMA = ["MODEL.EMA.ENABLED", "True", "MODEL.EMA.DECAY", "0.5", "MODEL.EMA.START_ITER", "0"]


def tool(script: str, *args: str) -> str:
    """Run a tool's main() in this process (its import costs seconds); returns what it printed."""
    spec = importlib.util.spec_from_file_location(f"tool_{script[:-3]}",
                                                  os.path.join(REPO, "tools", script))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        module.main(list(args))
    return out.getvalue()


def run(script: str, *args: str) -> str:
    cmd = [sys.executable, os.path.join(REPO, "tools", script), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=400, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, str]:
    root = str(tmp_path_factory.mktemp("data"))
    generate_synthetic_dwd(root, images_per_domain=4, image_size=128, seed=0, progress=False)
    out = str(tmp_path_factory.mktemp("ema_run"))
    data = ["DATASETS.DWD_ROOT", root, "DATASETS.TEST", "('tiny_daytime_clear_test',)"]
    # a large lr makes the live weights move away from their average within 3 steps
    run("train_net.py", "--config-file", TINY, *data, *EMA, "SOLVER.MAX_ITER", "3",
        "SOLVER.BASE_LR", "0.05", "SOLVER.STEPS", "()", "OUTPUT_DIR", out)
    return {"out": out, "data": data, "ckpt": os.path.join(out, "model_final.pth")}


def expected_merged_weight(ckpt: dict, use_ema: bool) -> torch.Tensor:
    model = ckpt["model"]
    source = ckpt["ema"]["shadow"] if use_ema else model
    a, b = source[f"{LAYER}.A"].double(), source[f"{LAYER}.B"].double()
    scaling = 4.0 / 4  # tiny config: ALPHA 4, RANK 4
    return (model[f"{LAYER}.weight"].double() + scaling * b @ a).float()


def test_merge_uses_the_ema_unless_no_ema(trained, tmp_path):
    ckpt = torch.load(trained["ckpt"], weights_only=True)
    assert ckpt["ema"]["started"] and ckpt["ema"]["num_updates"] == 3
    ema_w, live_w = expected_merged_weight(ckpt, True), expected_merged_weight(ckpt, False)
    assert (ema_w - live_w).abs().max() > 1e-4  # the test can tell them apart

    out = str(tmp_path / "merged.pth")
    text = tool("merge_adapter.py", "--config-file", TINY, "--weights", trained["ckpt"],
               "--output", out, *EMA)
    assert "used the EMA weights" in text and "3 updates" in text
    merged = torch.load(out, weights_only=True)
    assert merged["weights"] == "ema"
    torch.testing.assert_close(merged["model"][f"{LAYER}.weight"], ema_w, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(merged["model"][f"{LAYER}.bias"],
                               ckpt["ema"]["shadow"][f"{LAYER}.bias"])
    head = "roi_heads.box_predictor.cls_score.weight"
    torch.testing.assert_close(merged["model"][head], ckpt["ema"]["shadow"][head])

    live = str(tmp_path / "merged_live.pth")
    text = tool("merge_adapter.py", "--config-file", TINY, "--weights", trained["ckpt"],
               "--output", live, "--no-ema", *EMA)
    assert "used the live weights as asked" in text
    merged_live = torch.load(live, weights_only=True)
    assert merged_live["weights"] == "live"
    torch.testing.assert_close(merged_live["model"][f"{LAYER}.weight"], live_w, rtol=1e-5,
                               atol=1e-6)
    torch.testing.assert_close(merged_live["model"][head], ckpt["model"][head])

    # the merged EMA model is the model training evaluated
    eval_out = str(tmp_path / "eval_merged")
    run("train_net.py", "--config-file", TINY, "--eval-only", *trained["data"],
        "MODEL.SOMA.MODE", "frozen", "MODEL.WEIGHTS", out, "OUTPUT_DIR", eval_out,
        "TEST.DG.RUN_NAME", os.path.basename(trained["out"]))
    table = json.load(open(os.path.join(trained["out"], "dg_results.json")))
    merged_table = json.load(open(os.path.join(eval_out, "dg_results.json")))
    assert json.dumps(merged_table) == json.dumps(table)


def test_export_uses_the_ema_unless_no_ema_and_round_trips(trained, tmp_path):
    ckpt = torch.load(trained["ckpt"], weights_only=True)
    a_name = "blocks.3.mlp.fc1"  # names inside the ViT (adapter_state_dict of backbone.net)
    out = str(tmp_path / "adapter.pth")
    text = tool("export_adapter.py", "--config-file", TINY, "--weights", trained["ckpt"],
               "--output", out, *EMA)
    assert "used the EMA weights" in text
    adapter = torch.load(out, weights_only=True)
    assert adapter["weights"] == "ema"
    torch.testing.assert_close(adapter["soma"]["layers"][a_name]["A"],
                               ckpt["ema"]["shadow"][f"{LAYER}.A"])
    live = str(tmp_path / "adapter_live.pth")
    text = tool("export_adapter.py", "--config-file", TINY, "--weights", trained["ckpt"],
               "--output", live, "--no-ema", *EMA)
    assert "live weights as asked" in text
    adapter_live = torch.load(live, weights_only=True)
    torch.testing.assert_close(adapter_live["soma"]["layers"][a_name]["A"],
                               ckpt["model"][f"{LAYER}.A"])
    # an adapter file holds one set of weights: exporting it again says so and keeps them
    again = str(tmp_path / "adapter_again.pth")
    text = tool("export_adapter.py", "--config-file", TINY, "--weights", out, "--output", again,
               *EMA)
    assert "adapter-only file" in text
    torch.testing.assert_close(torch.load(again, weights_only=True)["soma"]["layers"][a_name]["A"],
                               adapter["soma"]["layers"][a_name]["A"])


def test_checkpoint_without_ema_exports_live_weights(trained, tmp_path):
    ckpt = torch.load(trained["ckpt"], weights_only=True)
    plain = str(tmp_path / "no_ema.pth")
    torch.save({"model": ckpt["model"]}, plain)
    out = str(tmp_path / "merged.pth")
    text = tool("merge_adapter.py", "--config-file", TINY, "--weights", plain, "--output", out)
    assert "live weights" in text and "holds no EMA" in text
    merged = torch.load(out, weights_only=True)
    assert merged["weights"] == "live"
    torch.testing.assert_close(merged["model"][f"{LAYER}.weight"],
                               expected_merged_weight(ckpt, False), rtol=1e-5, atol=1e-6)
