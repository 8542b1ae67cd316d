"""A run whose data set is missing fails before the model is built (issue 24): every
`DATASETS.TRAIN` / `DATASETS.TEST` entry is checked to be registered and to have its folders and
split files, for the built-in DWD names (missing root) and for `DATASETS.REGISTER` entries, with a
message naming the config key, the data set and the missing path. The model builder (which for
ViT-L includes a two-minute decomposition) must not have run."""
from __future__ import annotations

import os
import types

import pytest
from train_net_helpers import run_train_net

from soma_d2.data.catalog import DatasetFormatError, check_datasets_exist
from soma_d2.data.synthetic import generate_synthetic_dwd
from soma_d2.engine import setup
from soma_d2.engine.trainer import SoMATrainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs", "test", "tiny_soma_det.yaml")


@pytest.fixture
def no_model(monkeypatch):
    """Fails the test if anything builds the model."""
    built = []

    def refuse(cls, cfg):
        built.append(cfg)
        raise AssertionError("the model was built before the missing data set was reported")

    monkeypatch.setattr(SoMATrainer, "build_model", classmethod(refuse))
    return built


def _dwd(prefix: str) -> list[str]:
    """Overrides naming the built-in DWD data sets under `prefix` (the tiny config's sets)."""
    return ["DATASETS.DWD_PREFIX", prefix, "DATASETS.TRAIN", f"('{prefix}_daytime_clear_train',)",
            "DATASETS.TEST", f"('{prefix}_daytime_clear_test', '{prefix}_night_sunny')"]


def _setup(tmp_path, *opts: str, eval_only: bool = False):
    args = types.SimpleNamespace(config_file=TINY, eval_only=eval_only, register_module=[],
                                 num_gpus=1, resume=False,
                                 opts=["OUTPUT_DIR", str(tmp_path / "out"), *opts])
    return setup.setup_cfg(args)


def test_missing_dwd_root_fails_before_the_model_is_built(tmp_path, no_model):
    root = str(tmp_path / "no_dwd_here")
    cfg = _setup(tmp_path, "DATASETS.DWD_ROOT", root, *_dwd("chk1"))
    with pytest.raises(DatasetFormatError) as info:
        setup.train(cfg)
    message = str(info.value)
    assert "DATASETS.TRAIN: data set 'chk1_daytime_clear_train'" in message
    assert os.path.join(root, "daytime_clear", "VOC2007") in message
    assert "DATASETS.TEST: data set 'chk1_night_sunny'" in message
    assert os.path.join(root, "night_sunny", "VOC2007") in message
    assert no_model == []


def test_eval_only_checks_the_test_sets_not_the_training_set(tmp_path, no_model):
    root = str(tmp_path / "dwd")
    generate_synthetic_dwd(root, images_per_domain=2, image_size=64, seed=0, progress=False)
    os.remove(os.path.join(root, "night_sunny", "VOC2007", "ImageSets", "Main", "train.txt"))
    cfg = _setup(tmp_path, "DATASETS.DWD_ROOT", root, *_dwd("chk2"),
                 "DATASETS.TRAIN", "('chk2_absent_train',)", eval_only=True)
    with pytest.raises(DatasetFormatError) as info:
        setup.evaluate_only(cfg)
    message = str(info.value)
    split = os.path.join(root, "night_sunny", "VOC2007", "ImageSets", "Main", "train.txt")
    assert f"DATASETS.TEST: data set 'chk2_night_sunny': split file not found: {split}" in message
    assert "chk2_daytime_clear_test" not in message  # present: not reported
    assert "DATASETS.TRAIN" not in message  # an evaluation does not read the training set
    assert no_model == []


@pytest.mark.parametrize("kind", ["voc", "coco", "sem_seg"])
def test_registered_entries_with_missing_files_fail_before_the_model(tmp_path, no_model, kind):
    existing = str(tmp_path / "images")
    os.makedirs(existing)
    missing = str(tmp_path / "absent")
    entry, path = {
        "voc": (f"voc:chk_{kind}:{missing}:val:a,b", missing),
        "coco": (f"coco:chk_{kind}:{missing}.json:{existing}", missing + ".json"),
        "sem_seg": (f"sem_seg:chk_{kind}:{existing}:{missing}", missing),
    }[kind]
    cfg = _setup(tmp_path, "DATASETS.REGISTER", repr([entry]),
                 "DATASETS.TRAIN", f"('chk_{kind}',)", "DATASETS.TEST", "()",
                 "MODEL.ROI_HEADS.NUM_CLASSES", "2")
    with pytest.raises(DatasetFormatError, match=f"DATASETS.TRAIN: data set 'chk_{kind}': .*"
                                                 f"{path}$"):
        setup.train(cfg)
    assert no_model == []


def test_unregistered_names_are_reported_with_close_names(tmp_path):
    root = str(tmp_path / "dwd")
    generate_synthetic_dwd(root, images_per_domain=2, image_size=64, seed=0, progress=False)
    cfg = _setup(tmp_path, "DATASETS.DWD_ROOT", root, *_dwd("chk3"))
    check_datasets_exist({"DATASETS.TRAIN": cfg.DATASETS.TRAIN})  # all present: no error
    with pytest.raises(DatasetFormatError, match="'chk3_nigth_sunny' is not registered; did you "
                                                 "mean 'chk3_night_sunny'"):
        check_datasets_exist({"DATASETS.TEST": ["chk3_nigth_sunny"]})


def test_train_net_reports_a_missing_root_without_building_the_model(tmp_path):
    """As a user runs it: the error, the path, and no decomposition in the output."""
    root = str(tmp_path / "no_dwd_here")
    proc = run_train_net(TINY, "OUTPUT_DIR", str(tmp_path / "out"), "DATASETS.DWD_ROOT", root,
                         *_dwd("chk4"), check=False, timeout=200)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "DatasetFormatError" in output and os.path.join(root, "daytime_clear") in output
    assert "SoMA injection" not in output and "trainable parameters" not in output
