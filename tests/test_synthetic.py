"""The synthetic weather generator: DWD layout, determinism, learnable objects, domain styles."""
from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation.pascal_voc_evaluation import parse_rec
from PIL import Image

from soma_d2.data import DWD_CLASSES, DWD_DOMAINS, register_dwd
from soma_d2.data.synthetic import CLASS_SIZES, generate_synthetic_dwd, render_scene

N, SIZE = 14, 128
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("syn") / "dwd"
    summary = generate_synthetic_dwd(str(out), N, SIZE, seed=0, progress=False, workers=1)
    return out, summary


def _ids(path: Path) -> list[str]:
    return path.read_text().split()


def test_layout_is_dwd(generated):
    out, summary = generated
    assert sorted(os.listdir(out)) == sorted(DWD_DOMAINS)
    for domain in DWD_DOMAINS:
        voc = out / domain / "VOC2007"
        train = _ids(voc / "ImageSets/Main/train.txt")
        jpgs = sorted(p.stem for p in (voc / "JPEGImages").glob("*.jpg"))
        xmls = sorted(p.stem for p in (voc / "Annotations").glob("*.xml"))
        assert jpgs == xmls and len(jpgs) == N
        if domain == "daytime_clear":
            test = _ids(voc / "ImageSets/Main/test.txt")
            assert not set(train) & set(test) and sorted(train + test) == jpgs
            assert len(train) == round(0.7 * N)
        else:
            assert train == jpgs  # targets: train.txt lists the whole domain
        with Image.open(voc / "JPEGImages" / (jpgs[0] + ".jpg")) as im:
            assert im.format == "JPEG" and im.size == (SIZE, SIZE)
        # what Detectron2's own evaluator re-parses: pose, truncated, difficult, integer boxes
        objects = parse_rec(str(voc / "Annotations" / (jpgs[0] + ".xml")))
        assert 1 <= len(objects) <= 6 and all(o["name"] in DWD_CLASSES for o in objects)
        assert sum(summary[domain].values()) >= N


def test_registration_reads_generated_layout(generated):
    out, summary = generated
    names = register_dwd(str(out), prefix="syntest")
    for name in names:
        dicts = DatasetCatalog.get(name)
        assert dicts and all(d["height"] == d["width"] == SIZE for d in dicts)
        for d in dicts:
            for a in d["annotations"]:
                x0, y0, x1, y1 = a["bbox"]
                assert 0 <= x0 < x1 <= SIZE and 0 <= y0 < y1 <= SIZE
    rainy = DatasetCatalog.get("syntest_night_rainy")
    counts = np.bincount([a["category_id"] for d in rainy for a in d["annotations"]], minlength=7)
    assert counts.tolist() == [summary["night_rainy"][c] for c in DWD_CLASSES]
    assert (counts > 0).all()  # the first object cycles through all classes
    assert MetadataCatalog.get("syntest_night_rainy").domain == "night_rainy"


def _digest(root: Path, domain: str, image_id: str) -> str:
    voc = root / domain / "VOC2007"
    h = hashlib.sha256()
    for rel in (f"JPEGImages/{image_id}.jpg", f"Annotations/{image_id}.xml",
                "ImageSets/Main/train.txt"):
        h.update((voc / rel).read_bytes())
    return h.hexdigest()


def test_deterministic_for_a_seed(generated, tmp_path):
    out, _ = generated
    again, other = tmp_path / "again", tmp_path / "other"
    generate_synthetic_dwd(str(again), N, SIZE, seed=0, progress=False, workers=2)
    generate_synthetic_dwd(str(other), N, SIZE, seed=1, progress=False, workers=1)
    for domain, k in (("daytime_clear", 3), ("night_rainy", 0), ("daytime_foggy", 13)):
        image_id = f"{domain}_{k:05d}"
        assert _digest(out, domain, image_id) == _digest(again, domain, image_id)
        assert _digest(out, domain, image_id) != _digest(other, domain, image_id)


def test_objects_are_large_and_class_shaped():
    aspect: dict[str, list[float]] = {c: [] for c in DWD_CLASSES}
    yellow = []
    for i in range(28):
        image, objects = render_scene(np.random.default_rng([7, i]), "daytime_clear", 320,
                                      DWD_CLASSES[i % 7])
        assert 1 <= len(objects) <= 6
        arr = np.asarray(image, np.float32)
        for o in objects:
            x0, y0, x1, y1 = o.box
            w, h = x1 - x0 + 1, y1 - y0 + 1
            if not o.truncated:
                assert min(w, h) >= 14, (o, "objects must stay learnable at 320 px")
                aspect[o.name].append(w / h)
            if o.name == "bus" and not o.difficult:
                yellow.append(arr[y0 : y1 + 1, x0 : x1 + 1].mean(axis=(0, 1)))
    for name, ratios in aspect.items():
        expected = CLASS_SIZES[name][0] / CLASS_SIZES[name][1]
        assert ratios and abs(np.median(ratios) / expected - 1) < 0.2, name
    assert max(aspect["person"]) < min(aspect["car"])
    r, g, b = np.mean(yellow, axis=0)
    assert r > b + 40 and g > b + 20  # buses are yellow


def _band_stats(domain: str, seed: int) -> tuple[float, float]:
    image, _ = render_scene(np.random.default_rng([seed, 1]), domain, 160, "car")
    gray = np.asarray(image.convert("L"), np.float32)
    horizon_band = gray[50:80]  # the horizon lies at 36-44 % of the height
    return float(gray.mean()), float(horizon_band.std())


def test_domain_styles_differ_as_described():
    day = np.array([_band_stats("daytime_clear", s) for s in range(6)])
    night = np.array([_band_stats("night_sunny", s) for s in range(6)])
    fog = np.array([_band_stats("daytime_foggy", s) for s in range(6)])
    dusk = np.array([_band_stats("dusk_rainy", s) for s in range(6)])
    assert night[:, 0].mean() < 0.5 * day[:, 0].mean()
    assert dusk[:, 0].mean() < day[:, 0].mean()
    assert fog[:, 1].mean() < 0.6 * day[:, 1].mean()  # contrast lost toward the horizon
    with pytest.raises(ValueError, match="unknown synthetic domain 'snow'"):
        render_scene(np.random.default_rng(0), "snow")


def test_cli_prints_one_line_per_domain(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("make_synthetic_dwd",
                                                  ROOT / "tools" / "make_synthetic_dwd.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    out = tmp_path / "cli"
    assert tool.main(["--out", str(out), "--images-per-domain", "3", "--seed", "2",
                      "--image-size", "96"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [ln.split(":")[0] for ln in lines[:5]] == [f"[synthetic DWD] {d}" for d in DWD_DOMAINS]
    assert len(_ids(out / "daytime_clear/VOC2007/ImageSets/Main/test.txt")) == 1
