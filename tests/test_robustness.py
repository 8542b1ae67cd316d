"""Robustness evaluation (DATASETS.TEST_CORRUPTIONS): the table's numbers equal evaluating copies
corrupted by hand with `imagecorruptions`, repeated runs (and other processes) give the same
pixels and numbers, tools/make_corrupted.py copies give the on-the-fly numbers, mPC / rPC are the
means the protocol defines, and bad names / severities fail before any evaluation."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import inference_on_dataset
from detectron2.structures import Boxes, Instances
from imagecorruptions import corrupt
from PIL import Image

from soma_d2.config import build_cfg
from soma_d2.data import register_dwd, register_synthetic_semseg
from soma_d2.data.corruptions import corruption_seed, resolve_corruptions
from soma_d2.data.synthetic import generate_synthetic_dwd, generate_synthetic_semseg
from soma_d2.engine.trainer import SoMATrainer
from soma_d2.evaluation import build_dg_evaluator
from soma_d2.evaluation.robustness import DatasetRobustness, RobustnessTable

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs", "test", "tiny_soma_det.yaml")
TINY_SEG = os.path.join(REPO, "configs", "test", "tiny_soma_semseg.yaml")
TEST_SET = "tiny_night_sunny"
CORRUPTIONS, SEVERITIES = ("gaussian_noise", "fog"), (1, 3)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("synthetic_dwd"))
    generate_synthetic_dwd(root, images_per_domain=4, image_size=96, seed=0, progress=False)
    register_dwd(root, prefix="tiny")
    return root


def make_cfg(data_root: str, out: str, *opts: str):
    return build_cfg(TINY, [
        "DATASETS.DWD_ROOT", data_root, "OUTPUT_DIR", out, "DATASETS.TEST", f"('{TEST_SET}',)",
        "DATASETS.TEST_CORRUPTIONS", repr(CORRUPTIONS),
        "DATASETS.TEST_CORRUPTION_SEVERITIES", repr(SEVERITIES), "TEST.DG.RUN_NAME", "fake",
        *opts])


class PixelDrivenDetector(torch.nn.Module):
    """Predicts each ground-truth box shifted by an amount read from the pixels inside it, so the
    score moves with every corruption and severity (a real tiny model would score ~0 everywhere)."""

    def __init__(self, *dataset_names: str):
        super().__init__()
        records = [d for name in dataset_names for d in DatasetCatalog.get(name)]
        self.boxes = {d["image_id"]: [a["bbox"] for a in d["annotations"]] for d in records}
        self.classes = {d["image_id"]: [a["category_id"] for a in d["annotations"]]
                        for d in records}

    def forward(self, inputs):
        out = []
        for x in inputs:
            image = x["image"].double()
            h, w = x["height"], x["width"]
            sy, sx = image.shape[1] / h, image.shape[2] / w
            boxes, scores = [], []
            for x0, y0, x1, y1 in self.boxes[x["image_id"]]:
                patch = image[:, int(y0 * sy):int(y1 * sy) + 1, int(x0 * sx):int(x1 * sx) + 1]
                shift = (float(patch.std()) / 64 + float(patch.mean()) / 255) * (x1 - x0) * 0.4
                boxes.append([x0 + shift, y0, x1 + shift, y1])
                scores.append(float(patch.mean()) / 255)
            inst = Instances((h, w))
            inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
            inst.scores = torch.tensor(scores, dtype=torch.float32)
            inst.pred_classes = torch.tensor(self.classes[x["image_id"]], dtype=torch.int64)
            out.append({"instances": inst})
        return out


def read_table(out: str) -> dict:
    with open(os.path.join(out, "robustness_results.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def on_the_fly(data_root, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("on_the_fly"))
    cfg = make_cfg(data_root, out)
    SoMATrainer.test(cfg, PixelDrivenDetector(TEST_SET))
    return out


def _hand_corrupted_set(data_root: str, folder: str, corruption: str, severity: int,
                        source: str = TEST_SET) -> str:
    """Copies corrupted by calling imagecorruptions directly, registered as a data set."""
    name = f"hand-{source}-{corruption}-{severity}"
    records = []
    for d in DatasetCatalog.get(source):
        image = np.asarray(Image.open(d["file_name"]).convert("RGB"))
        np.random.seed(corruption_seed(d["file_name"], corruption, severity))
        path = os.path.join(folder, name, os.path.basename(d["file_name"]) + ".png")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.fromarray(corrupt(image, severity, corruption)).save(path)
        records.append({**d, "file_name": path})
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: records)
    meta = MetadataCatalog.get(source).as_dict()
    meta.pop("name")
    MetadataCatalog.get(name).set(**meta)
    return name


def test_table_equals_evaluating_hand_corrupted_copies(on_the_fly, data_root, tmp_path):
    table = read_table(on_the_fly)["runs"]["fake"][TEST_SET]
    cfg = make_cfg(data_root, str(tmp_path))
    model = PixelDrivenDetector(TEST_SET)
    values = []
    for corruption in CORRUPTIONS:
        for severity in SEVERITIES:
            name = _hand_corrupted_set(data_root, str(tmp_path), corruption, severity)
            loader = SoMATrainer.build_test_loader(cfg, name)
            res = inference_on_dataset(model, loader, build_dg_evaluator(cfg, name))
            expected = res["bbox"]["AP50"]
            assert table["scores"][corruption][str(severity)] == expected, (corruption, severity)
            values.append(expected)
    clean = json.load(open(os.path.join(on_the_fly, "dg_results.json")))["rows"][0]["values"]
    assert table["clean"] == clean["night_sunny"]
    # the corruptions must actually change the score, or this comparison proves nothing
    assert len(set(values + [table["clean"]])) >= 4
    assert table["mPC"] == pytest.approx(np.mean(values), abs=1e-12)
    assert table["rPC"] == pytest.approx(100 * np.mean(values) / table["clean"], abs=1e-9)
    assert table["corruptions"]["fog"] == pytest.approx(np.mean(values[2:]), abs=1e-12)
    assert table["severities"]["3"] == pytest.approx((values[1] + values[3]) / 2, abs=1e-12)
    for name in ("robustness_results.md", "robustness_heatmap.png"):
        assert os.path.getsize(os.path.join(on_the_fly, name)) > 0
    with open(os.path.join(on_the_fly, "robustness_heatmap.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    md = open(os.path.join(on_the_fly, "robustness_results.md")).read()
    assert "mPC" in md and "gaussian_noise" in md and "severity 3" in md


def test_repeated_runs_and_other_processes_identical(on_the_fly, data_root, tmp_path):
    cfg = make_cfg(data_root, str(tmp_path))
    SoMATrainer.test(cfg, PixelDrivenDetector(TEST_SET))
    assert read_table(str(tmp_path)) == read_table(on_the_fly)
    from soma_d2.data.corruptions import corrupted_image

    file_name = DatasetCatalog.get(TEST_SET)[0]["file_name"]
    here = hashlib.sha256(corrupted_image(file_name, "fog", 3).tobytes()).hexdigest()
    code = ("import hashlib,sys; from soma_d2.data.corruptions import corrupted_image; "
            "print(hashlib.sha256(corrupted_image(sys.argv[1], 'fog', 3).tobytes()).hexdigest())")
    proc = subprocess.run([sys.executable, "-c", code, file_name], capture_output=True,
                          text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == here


def test_make_corrupted_copies_give_the_on_the_fly_numbers(on_the_fly, data_root, tmp_path,
                                                          caplog):
    store = str(tmp_path / "store")
    cmd = [sys.executable, os.path.join(REPO, "tools", "make_corrupted.py"), "--config-file",
           TINY, "--output-dir", store, "--datasets", TEST_SET, "--corruptions",
           ",".join(CORRUPTIONS), "--severities", "1,3", "DATASETS.DWD_ROOT", data_root]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    # original layout under <store>/<dataset>/<corruption>/<severity>/, lossless PNG
    copies = sorted(os.path.relpath(os.path.join(d, f), store)
                    for d, _, fs in os.walk(store) for f in fs if f.endswith(".png"))
    assert len(copies) == 4 * len(CORRUPTIONS) * len(SEVERITIES)
    assert copies[0].startswith(os.path.join(TEST_SET, "fog", "1", "JPEGImages"))
    out = str(tmp_path / "stored")
    cfg = make_cfg(data_root, out, "DATASETS.TEST_CORRUPTION_DIR", store)
    with caplog.at_level(logging.INFO, logger="soma_d2"):
        SoMATrainer.test(cfg, PixelDrivenDetector(TEST_SET))
    assert read_table(out) == read_table(on_the_fly)
    assert caplog.text.count("(stored copy)") == len(CORRUPTIONS) * len(SEVERITIES)


@pytest.mark.parametrize("opts, message", [
    (["DATASETS.TEST_CORRUPTIONS", "('fog', 'rain')"], "unknown corruption 'rain'"),
    (["DATASETS.TEST_CORRUPTIONS", "('fog',)", "DATASETS.TEST_CORRUPTION_SEVERITIES", "(0, 6)"],
     "non-empty subset of (1, 2, 3, 4, 5)"),
    (["DATASETS.TEST_CORRUPTIONS", "('fog',)", "DATASETS.TEST_CORRUPTION_SEVERITIES", "()"],
     "non-empty subset"),
])
def test_bad_names_and_severities_fail_before_evaluation(opts, message, tmp_path):
    with pytest.raises(ValueError, match=re.escape(message)) as e:
        build_cfg(TINY, ["OUTPUT_DIR", str(tmp_path), *opts])
    if "rain" in message:  # the valid names are listed
        assert "gaussian_noise" in str(e.value) and "benchmark" in str(e.value)


def test_benchmark_expands_to_the_15_corruptions():
    names = resolve_corruptions(["benchmark"])
    assert len(names) == 15 and names[0] == "gaussian_noise" and names[-1] == "jpeg_compression"
    assert resolve_corruptions(["fog", "benchmark"])[0] == "fog"


def test_table_merges_runs_and_computes_mpc_rpc(tmp_path):
    a = DatasetRobustness("bbox/AP50", 50.0, {"fog": {1: 40.0, 2: 30.0}, "snow": {1: 20.0, 2: 10.0}})
    assert a.mpc == 25.0 and a.rpc == 50.0
    assert a.severity_means() == {1: 30.0, 2: 20.0}
    b = DatasetRobustness("sem_seg/mIoU", 80.0, {"fog": {1: 60.0}})
    RobustnessTable({"soma": {"x": a}}).write(str(tmp_path))
    RobustnessTable({"lora": {"y": b}}).write(str(tmp_path))
    merged = RobustnessTable({"soma": {"x": b}}).write(str(tmp_path))
    assert list(merged.rows) == ["soma", "lora"] and merged.rows["soma"]["x"].clean == 80.0
    data = read_table(str(tmp_path))
    assert data["runs"]["lora"]["y"]["rPC"] == 75.0 and data["runs"]["lora"]["y"]["mPC"] == 60.0
    zero = DatasetRobustness("bbox/AP50", 0.0, {"fog": {1: 0.0}}).to_dict()
    assert zero["rPC"] is None and zero["mPC"] == 0.0  # undefined, written as JSON null


class BrightnessSegmentor(torch.nn.Module):
    """Classes from pixel brightness bands: the mIoU moves with every corruption."""

    num_classes = 19

    def forward(self, inputs):
        out = []
        for x in inputs:
            gray = x["image"].double().mean(0, keepdim=True)[None]
            gray = torch.nn.functional.interpolate(gray, size=(x["height"], x["width"]))[0, 0]
            labels = (gray / 256 * self.num_classes).long().clamp(0, self.num_classes - 1)
            logits = torch.nn.functional.one_hot(labels, self.num_classes).permute(2, 0, 1)
            out.append({"sem_seg": logits.float()})
        return out


def test_segmentation_table_uses_miou_and_matches_hand_corrupted_copies(tmp_path):
    root = str(tmp_path / "seg")
    generate_synthetic_semseg(root, images_per_domain=3, image_size=96, seed=0, progress=False)
    register_synthetic_semseg(root, prefix="tinyseg")
    source = "tinyseg_night_sunny"
    out = str(tmp_path / "out")
    cfg = build_cfg(TINY_SEG, ["OUTPUT_DIR", out, "DATASETS.TEST", f"('{source}',)",
                               "DATASETS.TEST_CORRUPTIONS", "('contrast', 'shot_noise')",
                               "DATASETS.TEST_CORRUPTION_SEVERITIES", "(2, 5)",
                               "TEST.DG.RUN_NAME", "seg"])
    SoMATrainer.test(cfg, BrightnessSegmentor())
    entry = read_table(out)["runs"]["seg"][source]
    assert entry["metric"] == "sem_seg/mIoU"
    clean = json.load(open(os.path.join(out, "dg_results.json")))["rows"][0]["values"]
    assert entry["clean"] == clean["night_sunny"]
    cells = [v for row in entry["scores"].values() for v in row.values()]
    assert len(set(cells + [entry["clean"]])) == 5
    name = _hand_corrupted_set(root, str(tmp_path), "shot_noise", 5, source=source)
    loader = SoMATrainer.build_test_loader(cfg, name)
    res = inference_on_dataset(BrightnessSegmentor(), loader, build_dg_evaluator(cfg, name))
    assert entry["scores"]["shot_noise"]["5"] == res["sem_seg"]["mIoU"]


def test_demo_flags_become_validated_config_overrides(tmp_path, capsys):
    from soma_d2.engine.robustness import print_robustness_table, robustness_opts

    assert robustness_opts("") == []
    opts = robustness_opts("fog, gaussian_noise", "1,3")
    cfg = build_cfg(TINY, ["OUTPUT_DIR", str(tmp_path), *opts])
    assert cfg.DATASETS.TEST_CORRUPTIONS == ("fog", "gaussian_noise")
    assert cfg.DATASETS.TEST_CORRUPTION_SEVERITIES == (1, 3)
    with pytest.raises(ValueError, match="unknown corruption 'smog'"):
        build_cfg(TINY, ["OUTPUT_DIR", str(tmp_path), *robustness_opts("smog")])
    with pytest.raises(ValueError, match="integers 1-5"):
        robustness_opts("fog", "high")
    RobustnessTable({"demo": {"x": DatasetRobustness("bbox/AP50", 10.0, {"fog": {1: 5.0}})}}
                    ).write(str(tmp_path))
    print_robustness_table(cfg)
    assert "rPC" in capsys.readouterr().out


def test_periodic_evaluations_skip_corruptions_and_the_final_one_runs_them(data_root, tmp_path):
    from detectron2.utils.events import EventStorage

    from soma_d2.engine.robustness import evaluate_corruptions

    cfg = make_cfg(data_root, str(tmp_path))  # SOLVER.MAX_ITER 4
    with EventStorage(start_iter=1):  # a periodic evaluation: nothing is evaluated or written
        assert evaluate_corruptions(cfg, None, {}, build_dg_evaluator) is None
    assert not os.path.exists(os.path.join(str(tmp_path), "robustness_results.json"))
    clean = {TEST_SET: {"bbox": {"AP50": 50.0}}}
    with EventStorage(start_iter=3):  # after the last iteration
        table = evaluate_corruptions(cfg, PixelDrivenDetector(TEST_SET), clean, build_dg_evaluator)
    assert table.rows["fake"][TEST_SET].clean == 50.0
    assert len(read_table(str(tmp_path))["runs"]["fake"][TEST_SET]["scores"]["fog"]) == 2


class EmptyDetector(torch.nn.Module):
    """Detects nothing: the AP of a model after a few iterations (clean score 0)."""

    def forward(self, inputs):
        out = []
        for x in inputs:
            inst = Instances((x["height"], x["width"]))
            inst.pred_boxes = Boxes(torch.zeros(0, 4))
            inst.scores = torch.zeros(0)
            inst.pred_classes = torch.zeros(0, dtype=torch.int64)
            out.append({"instances": inst})
        return out


def _voc_json(out: str, folder: str, dataset: str) -> dict:
    with open(os.path.join(out, "inference", folder, f"dg_voc_{dataset}.json")) as f:
        return json.load(f)["bbox"]


def test_each_test_set_keeps_its_own_clean_and_corrupted_scores(data_root, tmp_path):
    """Two test sets: every cell is the number its own evaluator wrote for that data set, clean
    files are not overwritten by the corrupted passes (they were, before issue 24)."""
    sets = ("tiny_night_sunny", "tiny_night_rainy")
    out = str(tmp_path)
    cfg = make_cfg(data_root, out, "DATASETS.TEST", repr(sets))
    SoMATrainer.test(cfg, PixelDrivenDetector(*sets))
    table = read_table(out)["runs"]["fake"]
    dg = json.load(open(os.path.join(out, "dg_results.json")))["rows"][0]["values"]
    cleans = []
    for ds, domain in zip(sets, ("night_sunny", "night_rainy")):
        entry = table[ds]
        clean = _voc_json(out, ds, ds)["AP50"]  # the clean pass's own file, still clean
        assert entry["clean"] == clean == dg[domain] and clean > 0
        for c in CORRUPTIONS:
            for sev in SEVERITIES:
                folder = os.path.join(ds, "corrupted", f"{c}-{sev}")
                assert entry["scores"][c][str(sev)] == _voc_json(out, folder, ds)["AP50"]
        assert entry["rPC"] == pytest.approx(100 * entry["mPC"] / clean) and entry["rPC"] > 0
        assert entry["undefined"] == {}
        cleans.append(clean)
    assert cleans[0] != cleans[1]  # else a swap of data sets would go unnoticed
    md = open(os.path.join(out, "robustness_results.md")).read()
    assert "n/a" not in md and "Empty cells" not in md


def test_zero_clean_score_reports_rpc_undefined_with_the_reason(data_root, tmp_path):
    """A model that scores nothing (clean AP 0, as after a few iterations): mPC is a real 0,
    rPC is null in the JSON with its reason, and the markdown names the empty cell and why."""
    out = str(tmp_path)
    SoMATrainer.test(make_cfg(data_root, out), EmptyDetector())
    entry = read_table(out)["runs"]["fake"][TEST_SET]
    assert entry["clean"] == 0.0 == _voc_json(out, TEST_SET, TEST_SET)["AP50"]
    assert entry["mPC"] == 0.0 and entry["rPC"] is None
    assert set(entry["undefined"]) == {"rPC"}
    assert "clean bbox/AP50 is 0" in entry["undefined"]["rPC"]
    md = open(os.path.join(out, "robustness_results.md")).read()
    summary = next(line for line in md.splitlines() if f"| {TEST_SET} |" in line)
    assert summary.split("|")[6].strip() == "n/a [1]"  # the rPC column
    assert f"[1] {entry['undefined']['rPC']} (fake / {TEST_SET}: rPC)" in md


def test_undefined_cells_are_named_and_tiny_scores_are_not_printed_as_zero():
    r = DatasetRobustness("bbox/AP50", 40.0, {"fog": {1: float("nan"), 2: 0.01},
                                              "snow": {1: 20.0, 2: 10.0}})
    why = r.undefined()
    assert set(why) == {"scores/fog/1", "corruptions/fog", "severities/1", "mPC", "rPC"}
    assert r.to_dict()["scores"]["fog"] == {"1": None, "2": 0.01}
    md = RobustnessTable({"run": {"ds": r}}).to_markdown()
    assert "<0.1" in md and "| fog |" not in md
    grid = md[md.index("run on ds"):]
    fog = next(line for line in grid.splitlines() if line.strip("| ").startswith("fog"))
    assert [c.strip() for c in fog.strip("|").split("|")][1:] == ["n/a [1]", "<0.1", "n/a [2]"]
    assert "[1] the evaluator returned NaN for bbox/AP50 under fog severity 1" in grid
    assert DatasetRobustness.from_dict(r.to_dict()).undefined() == why


def test_demo_without_prediction_pngs_draws_nothing(tmp_path):
    """`tools/demo.py --num-vis 0` (used with --corruptions to save time) ended with "no
    predictions to draw"; it draws nothing and never loads the weights."""
    from soma_d2.engine.visualize import save_domain_predictions

    cfg = build_cfg(TINY, ["OUTPUT_DIR", str(tmp_path)])
    assert save_domain_predictions(cfg, str(tmp_path / "absent.pth"), num_images=0) == []
    assert os.listdir(tmp_path) == []
