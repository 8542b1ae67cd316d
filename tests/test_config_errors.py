"""Bad configs fail early and say what to change: unknown keys (with close matches and the section's
keys), wrong types, unsupported choices, a rank larger than a layer allows, START_BLOCK beyond the
depth, targets matching no layer, and incompatible MODEL.WEIGHTS (raw DINOv2, another rank, merged
weights) all raise errors naming the key and the accepted values, before any data is loaded (in
`SoMATrainer` and through tools/train_net.py)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from detectron2.modeling import build_model

import soma_d2.modeling  # noqa: F401  (registers the backbone)
from soma_d2.config import UnknownConfigKeyError, build_cfg
from soma_d2.data.synthetic import generate_synthetic_dwd
from soma_d2.engine.trainer import SoMATrainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs", "test", "tiny_soma_det.yaml")


def test_unknown_override_key_names_the_key_and_close_matches():
    with pytest.raises(UnknownConfigKeyError) as info:
        build_cfg(TINY, ["MODEL.SOMA.RANKK", "4"])
    message = str(info.value)
    assert "unknown config key MODEL.SOMA.RANKK" in message
    assert "did you mean ['MODEL.SOMA.RANK'" in message
    assert "keys under MODEL.SOMA:" in message and "MODEL.SOMA.START_BLOCK" in message


def test_unknown_key_in_yaml_names_the_file_and_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(f'_BASE_: "{TINY}"\nMODEL:\n  SOMAA:\n    RANK: 4\n')
    with pytest.raises(UnknownConfigKeyError) as info:
        build_cfg(str(path))
    message = str(info.value)
    assert str(path) in message and "MODEL.SOMAA" in message
    assert "'MODEL.SOMA.RANK'" in message or "MODEL.SOMAA is not a config section" in message


@pytest.mark.parametrize("key,value,expected", [
    ("MODEL.SOMA.RANK", "abc", r"Type mismatch \(<class 'int'> vs. <class 'str'>\).*MODEL\.SOMA\.RANK"),
    ("MODEL.SOMA.RANK", "2.5", r"<class 'int'> vs. <class 'float'>.*MODEL\.SOMA\.RANK"),
    ("MODEL.SOMA.TARGETS", "q", r"<class 'list'> vs. <class 'str'>.*MODEL\.SOMA\.TARGETS"),
    ("MODEL.SOMA.MODE", "somaa", r"MODEL\.SOMA\.MODE='somaa'.*accepted values: \['soma', "),
    ("MODEL.SOMA.RANK", "0", r"MODEL\.SOMA\.RANK=0 must be a positive integer"),
    ("SOLVER.OPTIMIZER", "Adam", r"SOLVER\.OPTIMIZER='Adam'.*\['AdamW', 'SGD'\]"),
])
def test_wrong_types_and_values_name_the_key(key, value, expected):
    with pytest.raises(ValueError, match=expected):
        build_cfg(TINY, [key, value])


# the tiny ViT: width 64, 4 blocks, START_BLOCK 2, targets q k v proj fc1 fc2
MODEL_ERRORS = [
    (["MODEL.SOMA.RANK", "64"],
     r"MODEL\.SOMA\.RANK does not fit.*rank 64 for module 'blocks\.2\.attn\.q'.*\[1, 63\]"),
    (["MODEL.SOMA.START_BLOCK", "4"], r"MODEL\.SOMA\.START_BLOCK=4 is outside \[0, 3\]"),
    (["MODEL.SOMA.TARGETS", "['qkv', 'mlp.fc3']"],
     r"MODEL\.SOMA\.TARGETS does not fit.*Available linear layers: 'blocks\.0\.attn\.q'"),
    (["MODEL.VIT.OUT_INDICES", "[7]"], r"MODEL\.VIT\.OUT_INDICES=\[7\].*\[0, 3\]"),
]


@pytest.mark.parametrize("opts,expected", MODEL_ERRORS)
def test_model_errors_name_the_key(opts, expected):
    with pytest.raises(ValueError, match=expected):
        build_model(build_cfg(TINY, opts))


# no data set is named, so the trainer's data-set check (which runs first) has nothing to refuse
NO_DATASETS = ("DATASETS.TRAIN", "()", "DATASETS.TEST", "()")


@pytest.fixture
def no_data_loading(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the training data was loaded before the config error surfaced")

    monkeypatch.setattr(SoMATrainer, "build_train_loader", classmethod(refuse))


@pytest.mark.parametrize("opts,expected", MODEL_ERRORS[:3])
def test_trainer_raises_model_errors_before_loading_data(tmp_path, no_data_loading, opts,
                                                         expected):
    cfg = build_cfg(TINY, ["OUTPUT_DIR", str(tmp_path), *NO_DATASETS, *opts])
    with pytest.raises(ValueError, match=expected):
        SoMATrainer(cfg)


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("weights")
    files = {}
    model = build_model(build_cfg(TINY))  # rank 4
    files["rank4"] = str(root / "rank4.pth")
    torch.save({"model": model.state_dict()}, files["rank4"])
    files["raw_dinov2"] = str(root / "dinov2_vits14_pretrain.pth")
    torch.save({"cls_token": torch.zeros(1, 1, 64), "pos_embed": torch.zeros(1, 65, 64),
                "patch_embed.proj.weight": torch.zeros(64, 3, 14, 14),
                "blocks.0.attn.qkv.weight": torch.zeros(192, 64)}, files["raw_dinov2"])
    files["raw_dinov3"] = str(root / "dinov3_vits16_pretrain.pth")
    torch.save({"cls_token": torch.zeros(1, 1, 64), "storage_tokens": torch.zeros(1, 4, 64),
                "patch_embed.proj.weight": torch.zeros(64, 3, 16, 16),
                "blocks.0.attn.qkv.weight": torch.zeros(192, 64)}, files["raw_dinov3"])
    merged = {k: v for k, v in model.state_dict().items() if not k.endswith((".A", ".B"))}
    files["merged"] = str(root / "merged.pth")
    torch.save({"model": merged}, files["merged"])
    return files


@pytest.mark.parametrize("name,opts,expected", [
    ("rank4", ["MODEL.SOMA.RANK", "2", "MODEL.SOMA.ALPHA", "2.0"],
     r"rank 4 .*built with rank 2.*Set MODEL\.SOMA\.RANK 4"),
    ("raw_dinov2", [], r"raw DINOv2 checkpoint.*MODEL\.SOMA\.PRETRAINED <file> MODEL\.WEIGHTS ''\.$"),
    ("raw_dinov3", [], r"raw DINOv3 checkpoint \(keys like \['storage_tokens'\]\).*"
                       r"MODEL\.WEIGHTS '' MODEL\.VIT\.FAMILY dinov3\."),
    ("merged", [], r"plain linear weights for \d+ SoMA-adapted layers.*MODEL\.SOMA\.MODE frozen"),
])
def test_incompatible_model_weights_fail_before_loading_data(tmp_path, no_data_loading,
                                                             weight_files, name, opts, expected):
    cfg = build_cfg(TINY, ["OUTPUT_DIR", str(tmp_path), "MODEL.WEIGHTS", weight_files[name],
                           *NO_DATASETS, *opts])
    with pytest.raises(ValueError, match=expected) as info:
        SoMATrainer(cfg)
    assert "MODEL.WEIGHTS=" in str(info.value) and weight_files[name] in str(info.value)


def test_train_net_reports_incompatible_weights_before_reading_data(tmp_path, weight_files):
    out = str(tmp_path / "out")
    # the data set's folders exist (checked before the model is built), but it is never loaded
    data_root = str(tmp_path / "data")
    generate_synthetic_dwd(data_root, images_per_domain=2, image_size=64, seed=0, progress=False)
    cmd = [sys.executable, os.path.join(REPO, "tools", "train_net.py"), "--config-file", TINY,
           "OUTPUT_DIR", out, "DATASETS.DWD_ROOT", data_root, "MODEL.WEIGHTS",
           weight_files["rank4"], "MODEL.SOMA.RANK", "2", "MODEL.SOMA.ALPHA", "2.0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "ValueError" in output and "Set MODEL.SOMA.RANK 4" in output
    assert "Distribution of instances" not in output and "DatasetFormatError" not in output
