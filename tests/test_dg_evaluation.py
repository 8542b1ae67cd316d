"""DG evaluation: VOC mAP against Detectron2's evaluator, COCO AP against pycocotools, DG table."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.pascal_voc import register_pascal_voc
from detectron2.evaluation import PascalVOCDetectionEvaluator
from detectron2.structures import Boxes, BoxMode, Instances
from detectron2.utils.events import EventStorage
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from soma_d2.config import add_soma_config
from soma_d2.data import register_coco_domain, register_dwd, register_voc_domain
from soma_d2.data.synthetic import SceneObject, generate_synthetic_dwd, voc_xml
from soma_d2.data.visualize import collect_predictions, save_prediction_grid
from soma_d2.evaluation import (
    DGCOCOEvaluator,
    DGTable,
    DGVOCEvaluator,
    build_dg_evaluator,
    dg_run_name,
    dg_source_domain,
)
from soma_d2.evaluation import voc_evaluator as voc_eval_module

CLASSES = ("a", "b", "c")


# ---------------------------------------------------------------- data and predictions
def _random_voc(root, rng, n_images=12, size=64):
    """A VOC set with random integer boxes, ~20 % difficult, one image without objects."""
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    ids = [f"img{i:03d}" for i in range(n_images)]
    for k, image_id in enumerate(ids):
        objects = []
        for _ in range(0 if k == 0 else int(rng.integers(1, 6))):
            x0, y0 = rng.integers(0, size - 12, 2)
            w, h = rng.integers(6, 24, 2)
            box = (int(x0), int(y0), int(min(size - 1, x0 + w)), int(min(size - 1, y0 + h)))
            objects.append(SceneObject(CLASSES[int(rng.integers(0, 3))], box, 1.0,
                                       difficult=int(rng.random() < 0.2)))
        with open(os.path.join(root, "Annotations", image_id + ".xml"), "w") as f:
            f.write(voc_xml(image_id, size, objects))
        Image.new("RGB", (size, size)).save(os.path.join(root, "JPEGImages", image_id + ".jpg"))
    with open(os.path.join(root, "ImageSets", "Main", "test.txt"), "w") as f:
        f.write("\n".join(ids) + "\n")
    return str(root)


def _instances(boxes, scores, classes, size) -> Instances:
    inst = Instances((size, size))
    inst.pred_boxes = Boxes(torch.tensor(np.asarray(boxes, np.float32).reshape(-1, 4)))
    inst.scores = torch.tensor(np.asarray(scores, np.float32))
    inst.pred_classes = torch.tensor(np.asarray(classes, np.int64))
    return inst


def _perturbed_predictions(dicts, rng, num_classes, size):
    """Per image: jittered GT boxes (some with a wrong class) and random false positives.

    Coordinates are multiples of 0.5 and scores distinct multiples of 0.001, so that Detectron2's
    text round trip (%.1f boxes, %.3f scores) loses nothing and the comparison is exact.
    """
    per_image = []
    for d in dicts:
        boxes, classes = [], []
        for a in d["annotations"]:
            if rng.random() < 0.85:
                jitter = rng.integers(-8, 9, 4) / 2.0
                boxes.append(np.clip(np.asarray(a["bbox"]) + jitter, 0, size))
                wrong = rng.random() < 0.1
                classes.append(int(rng.integers(0, num_classes)) if wrong else a["category_id"])
        for _ in range(int(rng.integers(0, 4))):
            x0, y0 = rng.integers(0, size - 20, 2)
            boxes.append(np.array([x0, y0, x0 + rng.integers(4, 20), y0 + rng.integers(4, 20)]))
            classes.append(int(rng.integers(0, num_classes)))
        per_image.append((boxes, classes))
    total = sum(len(b) for b, _ in per_image)
    scores = iter(rng.permutation(np.arange(1, 1000))[:total] / 1000.0)
    inputs, outputs = [], []
    for d, (boxes, classes) in zip(dicts, per_image):
        inputs.append({"image_id": d["image_id"]})
        s = [next(scores) for _ in boxes]
        outputs.append({"instances": _instances(boxes, s, classes, size)})
    return inputs, outputs


def _run(evaluator, inputs, outputs):
    evaluator.reset()
    for i in range(0, len(inputs), 3):  # a few batches, like inference_on_dataset
        evaluator.process(inputs[i : i + 3], outputs[i : i + 3])
    return evaluator.evaluate()


@pytest.fixture(scope="module")
def random_voc(tmp_path_factory):
    root = _random_voc(tmp_path_factory.mktemp("rvoc") / "voc", np.random.default_rng(3))
    register_voc_domain("tagree_test", root, "test", CLASSES)
    register_pascal_voc("tagree_area_test", root, "test", 2012, CLASSES)
    return root


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    out = tmp_path_factory.mktemp("evsyn") / "dwd"
    generate_synthetic_dwd(str(out), 14, 128, seed=5, progress=False, workers=1)
    return register_dwd(str(out), prefix="evtest")


# ---------------------------------------------------------------- VOC
@pytest.mark.parametrize("metric,d2_name", [("11point", "tagree_test"),
                                            ("area", "tagree_area_test")])
def test_voc_matches_detectron2_evaluator(random_voc, metric, d2_name):
    dicts = DatasetCatalog.get("tagree_test")
    assert any(a["difficult"] for d in dicts for a in d["annotations"])
    inputs, outputs = _perturbed_predictions(dicts, np.random.default_rng(11), 3, 64)
    ours = _run(DGVOCEvaluator("tagree_test", metric=metric), inputs, outputs)["bbox"]
    ref = _run(PascalVOCDetectionEvaluator(d2_name), inputs, outputs)["bbox"]
    assert 5 < ref["AP50"] < 95  # a non-trivial case
    for key in ("AP50", "AP", "AP75"):
        assert ours[key] == pytest.approx(ref[key], abs=1e-6), key
    assert set(ours) == {"AP", "AP50", "AP75", "AP50-a", "AP50-b", "AP50-c"}
    assert np.mean([ours[f"AP50-{c}"] for c in CLASSES]) == pytest.approx(ours["AP50"])


def test_synthetic_end_to_end_perfect_and_perturbed(synthetic, tmp_path):
    name = "evtest_night_sunny"
    dicts = DatasetCatalog.get(name)
    inputs = [{"image_id": d["image_id"]} for d in dicts]
    perfect = [
        {"instances": _instances([a["bbox"] for a in d["annotations"]],
                                 [1.0] * len(d["annotations"]),
                                 [a["category_id"] for a in d["annotations"]], 128)}
        for d in dicts
    ]
    res = _run(DGVOCEvaluator(name, output_dir=str(tmp_path)), inputs, perfect)["bbox"]
    assert res["AP50"] == pytest.approx(100.0) and res["AP"] == pytest.approx(100.0)
    saved = json.loads((tmp_path / f"dg_voc_{name}.json").read_text())
    assert saved["domain"] == "night_sunny" and saved["bbox"]["AP50"] == pytest.approx(100.0)

    inputs, outputs = _perturbed_predictions(dicts, np.random.default_rng(2), 7, 128)
    ours = _run(DGVOCEvaluator(name), inputs, outputs)["bbox"]
    ref = _run(PascalVOCDetectionEvaluator(name), inputs, outputs)["bbox"]
    assert ours["AP50"] == pytest.approx(ref["AP50"], abs=1e-6) and ours["AP50"] < 100


def test_voc_gathers_predictions_from_all_ranks(random_voc, monkeypatch):
    dicts = DatasetCatalog.get("tagree_test")
    inputs, outputs = _perturbed_predictions(dicts, np.random.default_rng(4), 3, 64)
    evaluator = DGVOCEvaluator("tagree_test")
    full = _run(evaluator, inputs, outputs)
    rank0 = DGVOCEvaluator("tagree_test")
    rank1 = DGVOCEvaluator("tagree_test")
    rank0.process(inputs[:5], outputs[:5])
    rank1.process(inputs[5:], outputs[5:])
    monkeypatch.setattr(voc_eval_module.comm, "gather",
                        lambda data, dst=0: [rank0._predictions, rank1._predictions])
    assert rank0.evaluate()["bbox"]["AP50"] == pytest.approx(full["bbox"]["AP50"], abs=1e-12)
    monkeypatch.setattr(voc_eval_module.comm, "is_main_process", lambda: False)
    assert rank0.evaluate() is None


def test_voc_difficult_only_and_missing_classes(random_voc):
    dicts = DatasetCatalog.get("tagree_test")
    evaluator = DGVOCEvaluator("tagree_test")
    # a perfect detection of a difficult object is neither a TP nor an FP
    inputs, outputs = [], []
    for d in dicts:
        keep = [a for a in d["annotations"] if a["category_id"] == 0]
        inputs.append({"image_id": d["image_id"]})
        outputs.append({"instances": _instances([a["bbox"] for a in keep],
                                                [0.9 if a["difficult"] else 0.5 for a in keep],
                                                [0] * len(keep), 64)})
    res = _run(evaluator, inputs, outputs)["bbox"]
    assert res["AP50-a"] == pytest.approx(100.0) and res["AP50-b"] == 0.0


def test_voc_class_without_ground_truth_is_nan_and_excluded(tmp_path):
    root = str(tmp_path / "v")
    os.makedirs(os.path.join(root, "ImageSets", "Main"))
    for sub in ("Annotations", "JPEGImages"):
        os.makedirs(os.path.join(root, sub))
    for image_id in ("x", "y"):
        objs = [SceneObject("a", (2, 2, 20, 20), 1.0)]
        with open(os.path.join(root, "Annotations", image_id + ".xml"), "w") as f:
            f.write(voc_xml(image_id, 32, objs))
        Image.new("RGB", (32, 32)).save(os.path.join(root, "JPEGImages", image_id + ".jpg"))
    with open(os.path.join(root, "ImageSets", "Main", "test.txt"), "w") as f:
        f.write("x\ny\n")
    register_voc_domain("tnogt_test", root, "test", CLASSES)
    inputs = [{"image_id": "x"}, {"image_id": "y"}]
    outputs = [{"instances": _instances([[2, 2, 21, 21]], [0.8], [0], 32)},
               {"instances": _instances([[2, 2, 21, 21], [1, 1, 5, 5]], [0.7, 0.6], [0, 1], 32)}]
    res = _run(DGVOCEvaluator("tnogt_test"), inputs, outputs)["bbox"]
    assert np.isnan(res["AP50-b"]) and np.isnan(res["AP50-c"])
    assert res["AP50"] == pytest.approx(100.0)
    with pytest.raises(ValueError, match="image id 'ghost'"):
        _run(DGVOCEvaluator("tnogt_test"), [{"image_id": "ghost"}], outputs[:1])


def test_voc_metric_must_be_known(random_voc):
    with pytest.raises(ValueError, match="'coco'"):
        DGVOCEvaluator("tagree_test", metric="coco")


# ---------------------------------------------------------------- COCO
def test_coco_matches_pycocotools(tmp_path):
    rng = np.random.default_rng(0)
    images, annotations = [], []
    for i in range(4):
        Image.new("RGB", (80, 60)).save(tmp_path / f"{i}.jpg")
        images.append({"id": i + 1, "file_name": f"{i}.jpg", "width": 80, "height": 60})
        for _ in range(3):
            x, y, w, h = (float(v) for v in rng.integers(0, 40, 4) + [0, 0, 8, 8])
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "iscrowd": 0,
                                "category_id": int(rng.choice([3, 7])), "bbox": [x, y, w, h],
                                "area": w * h})
    gt = {"images": images, "annotations": annotations,
          "categories": [{"id": 3, "name": "three"}, {"id": 7, "name": "seven"}]}
    json_file = tmp_path / "gt.json"
    json_file.write_text(json.dumps(gt))
    register_coco_domain("tcoco_val", str(json_file), str(tmp_path))
    meta = MetadataCatalog.get("tcoco_val")
    assert (meta.domain, meta.evaluator_type) == ("tcoco", "dg_coco")

    evaluator = DGCOCOEvaluator("tcoco_val", output_dir=str(tmp_path / "out"))
    assert meta.thing_classes == ["three", "seven"] and evaluator.domain == "tcoco"
    inputs, outputs, dets = [], [], []
    for img in images:
        mine = [a for a in annotations if a["image_id"] == img["id"]]
        boxes = [BoxMode.convert(a["bbox"], BoxMode.XYWH_ABS, BoxMode.XYXY_ABS) for a in mine]
        boxes = [np.asarray(b) + rng.integers(-6, 7, 4) / 2.0 for b in boxes]
        boxes.append(np.array([1.0, 1.0, 30.5, 20.0]))
        classes = [0 if a["category_id"] == 3 else 1 for a in mine] + [1]
        scores = rng.permutation(len(boxes)) / 10 + 0.05
        inputs.append({"image_id": img["id"]})
        outputs.append({"instances": _instances(boxes, scores, classes, 80)})
        for b, s, c in zip(boxes, np.float32(scores), classes):
            dets.append({"image_id": img["id"], "category_id": [3, 7][c], "score": float(s),
                         "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]),
                                  float(b[3] - b[1])]})
    ours = _run(evaluator, inputs, outputs)["bbox"]
    coco_gt = COCO(str(json_file))
    ev = COCOeval(coco_gt, coco_gt.loadRes(dets), "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    assert 0 < ev.stats[0] < 1
    assert ours["AP"] == pytest.approx(ev.stats[0] * 100, abs=1e-9)
    assert ours["AP50"] == pytest.approx(ev.stats[1] * 100, abs=1e-9)


# ---------------------------------------------------------------- DG table
DWD_RESULTS = {
    "dwd_night_rainy": {"bbox": {"AP50": 10.0, "AP": 5.0}},
    "dwd_daytime_clear_test": {"bbox": {"AP50": 60.0, "AP": 30.0}},
    "dwd_daytime_foggy": {"bbox": {"AP50": 30.0, "AP": 15.0}},
    "dwd_night_sunny": {"bbox": {"AP50": 20.0, "AP": 10.0}},
    "dwd_dusk_rainy": {"bbox": {"AP50": 40.0, "AP": 20.0}},
}


def _md_rows(text: str) -> list[list[str]]:
    rows = [ln for ln in text.splitlines() if ln.startswith("|")]
    return [[c.strip() for c in r.strip("|").split("|")] for r in rows if "---" not in r]


def test_dg_table_layout_and_mean():
    table = DGTable.from_results(DWD_RESULTS, "soma", source_domain="daytime_clear")
    assert table.metric == "bbox/AP50"  # from the data sets' evaluator type (dg_voc)
    assert table.domains == ["daytime_clear", "night_sunny", "dusk_rainy", "night_rainy",
                             "daytime_foggy"]
    assert table.mean_target("soma") == pytest.approx(25.0)
    header, row = _md_rows(table.to_markdown())
    assert header == ["run", "daytime_clear (source)", "night_sunny", "dusk_rainy", "night_rainy",
                      "daytime_foggy", "mean (targets)", "mean (all)"]
    assert row == ["soma", "60.0", "20.0", "40.0", "10.0", "30.0", "25.0", "32.0"]
    assert table.mean_all("soma") == pytest.approx(32.0)  # official DWD "mean": all five domains
    coco_key = DGTable.from_results(DWD_RESULTS, "x", "daytime_clear", metric_key=("bbox", "AP"))
    assert coco_key.mean_target("x") == pytest.approx(12.5)


def test_dg_table_generic_domains_keep_given_order(tmp_path):
    for name, domain in (("tgen_src", "src"), ("tgen_zeta", "zeta"), ("tgen_alpha", "alpha")):
        register_voc_domain(name, str(tmp_path), "test", CLASSES, domain=domain)
    results = {"tgen_zeta": {"bbox": {"AP50": 1.0}}, "tgen_src": {"bbox": {"AP50": 9.0}},
               "tgen_alpha": {"bbox": {"AP50": 3.0}}}
    table = DGTable.from_results(results, "r", source_domain="src")
    assert table.domains == ["src", "zeta", "alpha"] and table.mean_target("r") == 2.0
    assert DGTable.from_results(results, "r").source == "zeta"  # default: the first data set


def test_dg_table_write_merges_rows(tmp_path):
    out = str(tmp_path)
    DGTable.from_results(DWD_RESULTS, "baseline", "daytime_clear").write(out)
    better = {k: {"bbox": {"AP50": v["bbox"]["AP50"] + 1}} for k, v in DWD_RESULTS.items()}
    DGTable.from_results(better, "soma", "daytime_clear").write(out)
    best = {k: {"bbox": {"AP50": v["bbox"]["AP50"] + 2}} for k, v in DWD_RESULTS.items()}
    merged = DGTable.from_results(best, "soma", "daytime_clear").write(out)  # replaces its row
    saved = json.loads((tmp_path / "dg_results.json").read_text())
    assert [r["run"] for r in saved["rows"]] == ["baseline", "soma"]
    assert saved["rows"][1]["values"]["night_sunny"] == 22.0
    assert saved["rows"][1]["mean_target"] == pytest.approx(27.0)
    assert saved["source"] == "daytime_clear" and saved["targets"][0] == "night_sunny"
    md_rows = _md_rows((tmp_path / "dg_results.md").read_text())
    assert [r[0] for r in md_rows[1:]] == ["baseline", "soma"] and md_rows[2][-2] == "27.0"
    assert DGTable.from_dict(saved).rows == merged.rows
    # another metric is not mixed into this table: the old one is moved aside
    DGTable.from_results(DWD_RESULTS, "coco", "daytime_clear", ("bbox", "AP")).write(out)
    assert (tmp_path / "dg_results.json.bak").exists()
    assert [r["run"] for r in json.loads((tmp_path / "dg_results.json").read_text())["rows"]] == [
        "coco"]


def test_dg_table_partial_row_has_no_mean(tmp_path):
    out = str(tmp_path)
    DGTable.from_results(DWD_RESULTS, "full", "daytime_clear").write(out)
    partial = {k: DWD_RESULTS[k] for k in ("dwd_daytime_clear_test", "dwd_night_sunny")}
    merged = DGTable.from_results(partial, "partial", "daytime_clear").write(out)
    assert merged.mean_target("partial") is None and merged.mean_target("full") == 25.0
    assert _md_rows(merged.to_markdown())[2][-2:] == ["-", "-"]


def test_dg_table_logs_to_event_storage():
    table = DGTable.from_results(DWD_RESULTS, "soma", "daytime_clear")
    assert table.log_to_storage() is False
    with EventStorage(0) as storage:
        assert table.log_to_storage()
        latest = storage.latest()
    assert latest["dg/night_sunny"][0] == 20.0 and latest["dg/mean_target"][0] == 25.0


def test_dg_table_errors():
    with pytest.raises(ValueError, match="single data set"):
        DGTable.from_results({"bbox": {"AP50": 1.0}}, "r")
    both = {"dwd_daytime_clear_train": {"bbox": {"AP50": 1.0}},
            "dwd_daytime_clear_test": {"bbox": {"AP50": 2.0}}}
    with pytest.raises(ValueError, match="both have domain 'daytime_clear'"):
        DGTable.from_results(both, "r")
    with pytest.raises(KeyError, match="dwd_night_sunny.*bbox/AP50"):
        DGTable.from_results({"dwd_night_sunny": {"bbox": {"AP": 1.0}}}, "r")


def test_cfg_helpers_and_evaluator_dispatch(random_voc, tmp_path):
    cfg = add_soma_config(get_cfg())
    cfg.DATASETS.TRAIN = ("dwd_daytime_clear_train",)
    cfg.OUTPUT_DIR = str(tmp_path / "runs" / "soma_vitb")
    assert dg_source_domain(cfg) == "daytime_clear" and dg_run_name(cfg) == "soma_vitb"
    cfg.TEST.DG.RUN_NAME = "SoMA ViT-B"
    cfg.TEST.DG.VOC_METRIC = "area"
    assert dg_run_name(cfg) == "SoMA ViT-B"
    evaluator = build_dg_evaluator(cfg, "tagree_test")
    assert isinstance(evaluator, DGVOCEvaluator) and evaluator._metric == "area"
    with pytest.raises(NotImplementedError, match="tagree_area_test.*None"):
        build_dg_evaluator(cfg, "tagree_area_test")  # Detectron2's VOC registration: no type
    MetadataCatalog.get("tagree_lvis").set(evaluator_type="lvis")
    with pytest.raises(NotImplementedError, match="tagree_lvis.*'lvis'"):
        build_dg_evaluator(cfg, "tagree_lvis")


# ---------------------------------------------------------------- visualization
class _EchoModel(torch.nn.Module):
    """Predicts each input's ground truth with decreasing scores (a stand-in detector)."""

    def forward(self, inputs):
        assert not self.training
        outs = []
        for inp in inputs:
            anns = inp["annotations"]
            scores = np.linspace(0.95, 0.05, len(anns)) if anns else []
            outs.append({"instances": _instances([a["bbox"] for a in anns], scores,
                                                 [a["category_id"] for a in anns], 128)})
        return outs


def test_prediction_grid(synthetic, tmp_path):
    name = "evtest_dusk_rainy"
    dicts = DatasetCatalog.get(name)
    loader = [[dict(d, image=torch.zeros(1))] for d in dicts]
    model = _EchoModel().train()
    pairs = collect_predictions(model, loader, num_images=3)
    assert model.training and len(pairs) == 3 and "image" not in pairs[0][0]
    drawn = save_prediction_grid(pairs, name, str(tmp_path / "g0.png"), score_threshold=0.0)
    blank = save_prediction_grid(pairs, name, str(tmp_path / "g1.png"), score_threshold=2.0)
    a, b = (np.asarray(Image.open(p), np.float32) for p in (drawn, blank))
    assert a.shape == (256, 256, 3)  # 2 columns x 2 rows of 128 px tiles
    raw = np.asarray(Image.open(dicts[0]["file_name"]).convert("RGB"), np.float32)
    assert np.abs(b[:128, :128] - raw).mean() < 2.0  # nothing drawn above the threshold
    assert np.abs(a[:128, :128] - raw).mean() > 2.0  # boxes and labels drawn
