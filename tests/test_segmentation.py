"""Segmentation end to end through tools/train_net.py on CPU: the tiny SoMA segmentor trains on
the synthetic weather segmentation data, writes the per-domain mIoU table (checked against an
independent recomputation from its saved predictions), and --eval-only reproduces the table."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util
import pytest
import train_net_helpers as helpers
from PIL import Image

from soma_d2.data.dwd import DWD_DOMAINS

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "test" / "tiny_soma_semseg.yaml")
PREFIX = "tinyseg"  # DATASETS.SYNTHETIC_SEG_PREFIX of the tiny config


DATA_KEY = "DATASETS.SYNTHETIC_SEG_ROOT"


@pytest.fixture(scope="module")
def data_root(synthetic_semseg_root) -> str:
    return synthetic_semseg_root


@pytest.fixture(scope="module")
def trained(data_root, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("semseg_run"))
    return helpers.train_run(TINY, DATA_KEY, data_root, out, timeout=300)


def _metrics(out: str) -> dict[int, dict]:
    rows = {}
    for line in Path(out, "metrics.json").read_text().splitlines():
        row = json.loads(line)
        if "lr" in row:
            rows[row["iteration"]] = row
    return rows


def test_training_writes_per_domain_miou_table(trained):
    table = json.loads(Path(trained, "dg_results.json").read_text())
    assert table["metric"] == "sem_seg/mIoU" and table["source"] == "daytime_clear"
    assert table["domains"] == list(DWD_DOMAINS)
    (row,) = table["rows"]
    values = row["values"]
    assert all(0 <= values[d] <= 100 for d in DWD_DOMAINS)
    assert row["mean_target"] == pytest.approx(np.mean([values[d] for d in DWD_DOMAINS[1:]]))
    assert "sem_seg/mIoU" in Path(trained, "dg_results.md").read_text()
    for name in ("model_final.pth", "model_final_adapter.pth", "model_0000009.pth"):
        assert Path(trained, name).is_file(), name
    rows = _metrics(trained)
    max_iter, base = 20, 0.002
    for it in (0, 9, 19):  # WarmupPolyLR without warm-up: base * (1 - it / max_iter) ** 0.9
        if it in rows:
            assert rows[it]["lr"] == pytest.approx(base * (1 - it / max_iter) ** 0.9, rel=1e-6)
    first, last = min(rows), max(rows)
    assert rows[last]["total_loss"] < rows[first]["total_loss"]
    assert rows[last]["weight_decay"] < rows[first]["weight_decay"]  # annealed


def _miou_from_predictions(pred_json: Path, label_of: dict[str, str]) -> tuple[float, dict]:
    """mIoU recomputed from the RLE predictions Detectron2's evaluator saved (numpy only)."""
    preds: dict[str, np.ndarray] = {}
    for entry in json.loads(pred_json.read_text()):
        rle = dict(entry["segmentation"], counts=entry["segmentation"]["counts"].encode())
        mask = mask_util.decode(rle).astype(bool)
        pred = preds.setdefault(entry["file_name"], np.full(mask.shape, -1))
        pred[mask] = entry["category_id"]
    inter, gt_area, pred_area = np.zeros(19), np.zeros(19), np.zeros(19)
    for file_name, pred in preds.items():
        gt = np.asarray(Image.open(label_of[file_name])).astype(int)
        valid = gt != 255
        for c in range(19):
            g, p = (gt == c) & valid, (pred == c) & valid
            inter[c] += (g & p).sum()
            gt_area[c] += g.sum()
            pred_area[c] += p.sum()
    present = gt_area > 0
    iou = inter[present] / (gt_area + pred_area - inter)[present]
    return 100 * iou.mean(), {"classes": int(present.sum())}


def _image_of(label: Path) -> str:
    name = label.name.replace("_gtFine_labelTrainIds", "_leftImg8bit")
    return str(label.parent).replace("/gtFine/", "/leftImg8bit/") + "/" + name


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_table_matches_an_independent_recomputation(trained, data_root):
    table = json.loads(Path(trained, "dg_results.json").read_text())
    for domain in ("night_sunny", "daytime_foggy"):
        folder = Path(trained, "inference", f"{PREFIX}_{domain}")
        labels = {_image_of(p): str(p)
                  for p in Path(data_root, domain, "gtFine").rglob("*_labelTrainIds.png")}
        miou, info = _miou_from_predictions(folder / "sem_seg_predictions.json", labels)
        assert info["classes"] >= 10
        assert miou == pytest.approx(table["rows"][0]["values"][domain], abs=1e-6)
        per_class = json.loads((folder / "sem_seg_evaluation.json").read_text())
        assert per_class["mIoU"] == pytest.approx(miou, abs=1e-6)
        assert "IoU-road" in per_class and math.isnan(per_class["IoU-train"])


def test_eval_only_reproduces_the_table(trained, data_root, tmp_path):
    before = json.loads(Path(trained, "dg_results.json").read_text())
    out = str(tmp_path / "eval")
    after = helpers.eval_only_table(TINY, DATA_KEY, data_root, trained, out, timeout=300)
    assert after == before
