"""Semantic segmentation parts: the meta-arch contract (output size, ignore label, whole vs slide,
TTA), registration errors and layouts, label-map reporting and the preparation scripts, the
mapper, the synthetic label maps, and agreement of DGSemSegEvaluator with Detectron2's own."""
from __future__ import annotations

import importlib.util
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import transforms as T
from detectron2.evaluation import SemSegEvaluator
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY, build_model
from PIL import Image
from stub_models import PoolBackbone
from torch import nn
from torch.nn import functional as F

import soma_d2.modeling  # noqa: F401  (registers the meta-arch)
from soma_d2.config import build_cfg
from soma_d2.data import DatasetFormatError, register_seg_datasets, register_synthetic_semseg
from soma_d2.data.resize import CV2Resize
from soma_d2.data.seg_datasets import sem_seg_metadata
from soma_d2.data.seg_labels import (
    CITYSCAPES_ID_TO_TRAIN_ID,
    CITYSCAPES_STUFF_CLASSES,
    LabelMap,
    make_label_map,
)
from soma_d2.data.seg_mapper import build_sem_seg_augmentations, build_sem_seg_mapper
from soma_d2.data.synthetic import (
    SEG_TRAIN_IDS,
    domain_textures,
    generate_synthetic_semseg,
    render_scene,
    render_scene_with_labels,
)
from soma_d2.evaluation import DGSemSegEvaluator
from soma_d2.modeling.segmentation import SoMASemanticSegmentor, slide_windows
from soma_d2.modeling.segmentation import is_semantic_segmentor as uses_sem_seg

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "test" / "tiny_soma_semseg.yaml")
GTA_CFG = str(ROOT / "configs" / "gta2cbm_soma_semfpn.yaml")


def tiny_cfg(*opts: str):
    return build_cfg(TINY, list(opts))


def save_png(path: Path, array: np.ndarray, mode: str | None = None) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path)
    return str(path)


# ---- meta-architecture -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    model = build_model(tiny_cfg("MODEL.SEM_SEG_INFERENCE.MODE", "whole"))
    assert isinstance(model, SoMASemanticSegmentor)
    return model


def test_outputs_have_the_record_resolution_in_both_modes(tiny_model):
    image = torch.randint(0, 256, (3, 100, 150)).float()
    record = {"image": image, "height": 200, "width": 300}
    tiny_model.eval()
    with torch.no_grad():
        whole = tiny_model([record])[0]["sem_seg"]
        tiny_model.inference_mode = "slide"
        try:
            slide = tiny_model([record, {"image": image}])
        finally:
            tiny_model.inference_mode = "whole"
    assert whole.shape == (19, 200, 300)
    assert slide[0]["sem_seg"].shape == (19, 200, 300)
    assert slide[1]["sem_seg"].shape == (19, 100, 150)  # no height/width: the input size
    assert torch.isfinite(whole).all() and torch.isfinite(slide[0]["sem_seg"]).all()


def test_training_loss_ignores_the_ignore_label(tiny_model):
    torch.manual_seed(1)
    image = torch.randint(0, 256, (3, 64, 96)).float()  # a multiple of 32: no padding
    target = torch.randint(0, 19, (64, 96))
    target[:, :40] = 255
    tiny_model.train()
    loss = tiny_model([{"image": image, "sem_seg": target}])["loss_sem_seg"]
    tiny_model.eval()
    with torch.no_grad():
        norm = ((image - tiny_model.pixel_mean) / tiny_model.pixel_std)[None]
        logits = tiny_model.whole_inference(norm)
    valid = target != 255
    reference = F.cross_entropy(logits[0].permute(1, 2, 0)[valid], target[valid])
    assert loss.item() == pytest.approx(reference.item(), rel=1e-4)
    relabelled = target.clone()
    relabelled[~valid] = 0  # the same pixels, now counted: the loss must change
    tiny_model.train()
    other = tiny_model([{"image": image, "sem_seg": relabelled}])["loss_sem_seg"]
    assert abs(other.item() - loss.item()) > 1e-3


def test_training_pads_sizes_the_pyramid_cannot_take(tiny_model):
    tiny_model.train()
    batch = [
        {"image": torch.rand(3, 70, 90) * 255, "sem_seg": torch.randint(0, 19, (70, 90))},
        {"image": torch.rand(3, 50, 100) * 255, "sem_seg": torch.randint(0, 19, (50, 100))},
    ]
    assert tiny_model.size_divisibility == 32
    loss = tiny_model(batch)["loss_sem_seg"]
    loss.backward()
    assert torch.isfinite(loss)
    with pytest.raises(ValueError, match="needs a 'sem_seg' target"):
        tiny_model([{"image": torch.rand(3, 64, 64)}])


@SEM_SEG_HEADS_REGISTRY.register()
class PointwiseTestHead(nn.Module):
    """A per-pixel head registered by name: shows another head plugs into the meta-arch."""

    def __init__(self, cfg, input_shape):
        super().__init__()
        self.predictor = nn.Conv2d(input_shape["p2"].channels, 5, 1)
        self.ignore_value = 255

    def forward(self, features, targets=None):
        x = F.interpolate(self.predictor(features["p2"]), scale_factor=4, mode="nearest")
        if self.training:
            return None, {"loss_sem_seg": F.cross_entropy(x, targets, ignore_index=255)}
        return x, {}


def _toy(**kwargs) -> SoMASemanticSegmentor:
    torch.manual_seed(0)
    head = SEM_SEG_HEADS_REGISTRY.get("PointwiseTestHead")(None, PoolBackbone().output_shape())
    return SoMASemanticSegmentor(
        backbone=PoolBackbone(), sem_seg_head=head, pixel_mean=[0.0] * 3, pixel_std=[1.0] * 3,
        **kwargs,
    ).eval()


def test_whole_and_slide_agree_on_a_translation_equivariant_model():
    image = torch.rand(3, 40, 56) * 255
    whole = _toy(inference_mode="whole")
    slide = _toy(inference_mode="slide", crop_size=(16, 24), stride=(8, 12), crop_batch=3)
    with torch.no_grad():
        a = whole([{"image": image}])[0]["sem_seg"]
        b = slide([{"image": image}])[0]["sem_seg"]
    assert a.shape == b.shape == (5, 40, 56)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_tta_flip_and_scales():
    image = torch.rand(3, 40, 56) * 255
    with torch.no_grad():
        logits = _toy()([{"image": image}])[0]["sem_seg"]
        flipped = _toy(flip=True)([{"image": image}])[0]["sem_seg"]
        multi = _toy(flip=True, scales=(0.5, 1.0, 1.5))([{"image": image, "height": 20,
                                                          "width": 28}])[0]["sem_seg"]
    # a per-pixel model is flip-equivariant: flip TTA = softmax of the plain prediction
    torch.testing.assert_close(flipped, logits.softmax(0), rtol=1e-5, atol=1e-6)
    assert multi.shape == (5, 20, 28)
    torch.testing.assert_close(multi.sum(0), torch.ones(20, 28), rtol=1e-4, atol=1e-4)


def test_slide_windows_cover_the_image_like_mmseg():
    windows = slide_windows(1024, 2048, (512, 512), (341, 341))
    assert len(windows) == 3 * 6  # mmseg: h_grids = (1024-512+340)//341+1, w_grids likewise
    cover = np.zeros((1024, 2048), int)
    for y0, y1, x0, x1 in windows:
        assert (y1 - y0, x1 - x0) == (512, 512) and y0 >= 0 and x1 <= 2048
        cover[y0:y1, x0:x1] += 1
    assert cover.min() >= 1
    assert slide_windows(300, 200, (512, 512), (341, 341)) == [(0, 300, 0, 200)]


def test_config_validation_names_the_key():
    with pytest.raises(ValueError, match="MODEL.SEM_SEG_INFERENCE.MODE='sliding'"):
        tiny_cfg("MODEL.SEM_SEG_INFERENCE.MODE", "sliding")
    with pytest.raises(ValueError, match="STRIDE=.*exceeds CROP_SIZE"):
        tiny_cfg("MODEL.SEM_SEG_INFERENCE.STRIDE", "(128, 128)")
    with pytest.raises(ValueError, match="SCALES"):
        tiny_cfg("MODEL.SEM_SEG_INFERENCE.SCALES", "[]")
    with pytest.raises(ValueError, match="SINGLE_CATEGORY_MAX_AREA"):
        tiny_cfg("INPUT.CROP.SINGLE_CATEGORY_MAX_AREA", "0.0")


# ---- configs and mapper ------------------------------------------------------------------------


def test_recipe_config_and_augmentations():
    cfg = build_cfg(GTA_CFG)
    assert uses_sem_seg(cfg)
    assert not uses_sem_seg(build_cfg(str(ROOT / "configs" / "dwd_soma.yaml")))
    s = cfg.SOLVER
    assert (s.BASE_LR, s.BACKBONE_LR_MULT, s.BACKBONE_WD_MULT) == (1e-4, 0.5, 1.0)
    assert (s.WEIGHT_DECAY, s.WEIGHT_DECAY_SCHEDULE, s.WEIGHT_DECAY_END) == (0.05, "cosine", 1e-5)
    assert (s.LR_SCHEDULER_NAME, s.POLY_POWER) == ("WarmupPolyLR", 0.9)
    assert (s.MAX_ITER, s.IMS_PER_BATCH, tuple(cfg.INPUT.CROP.SIZE)) == (40000, 4, (512, 512))
    assert (cfg.MODEL.EMA.ENABLED, cfg.MODEL.EMA.START_ITER) == (True, 12000)
    assert (cfg.MODEL.VIT.ARCH, cfg.MODEL.SOMA.RANK, cfg.MODEL.SOMA.START_BLOCK) == ("vit_l", 16, 8)
    assert cfg.DATASETS.TRAIN == ("gtav_train",)
    for base in ("lora", "full_ft", "frozen"):
        other = build_cfg(str(ROOT / "configs" / f"gta2cbm_{base}_semfpn.yaml"))
        other.MODEL.SOMA.MODE, other.OUTPUT_DIR = cfg.MODEL.SOMA.MODE, cfg.OUTPUT_DIR
        assert other.dump() == cfg.dump(), base
    augs = build_sem_seg_augmentations(cfg, is_train=True)
    cv2_resize, crop, flip = augs[:3]
    assert isinstance(cv2_resize, CV2Resize)  # Detectron2's size rule, mmcv's cv2 interpolation
    resize = cv2_resize.augmentation
    assert isinstance(resize, T.ResizeShortestEdge) and resize.short_edge_length == (256, 1024)
    assert resize.max_size == 4096 and resize.sample_style == "range"
    assert isinstance(crop, T.RandomCrop_CategoryAreaConstraint)
    assert crop.crop_aug.crop_size == (512, 512) and crop.single_category_max_area == 0.75
    assert crop.ignored_category == 255 and isinstance(flip, T.RandomFlip)
    assert len(augs) == 6 and all(isinstance(a, T.RandomApply) for a in augs[3:])
    test = build_sem_seg_augmentations(cfg, is_train=False)
    test_resize = test[0].augmentation
    assert len(test) == 1 and test_resize.short_edge_length == (512, 512)
    assert test_resize.max_size == 1024


def test_mapper_reads_sizes_and_ignores_unknown_ids(tmp_path, caplog):
    image = save_png(tmp_path / "a.png", np.full((80, 120, 3), 90, np.uint8))
    # id 40 (not a train id) in most rows, so that every random crop holds some of it (the test
    # must not depend on the global RNG state that earlier tests leave)
    label = np.full((80, 120), 40, np.uint8)
    label[10:20] = 255
    label[60:] = 0
    label_file = save_png(tmp_path / "a_label.png", label)
    cfg = tiny_cfg()
    train = build_sem_seg_mapper(cfg, True)
    with caplog.at_level(logging.WARNING, logger="soma_d2.data.seg_mapper"):
        out = train({"file_name": image, "sem_seg_file_name": label_file})
        train({"file_name": image, "sem_seg_file_name": label_file})
    sem = out["sem_seg"]
    assert out["image"].shape[1:] == sem.shape and max(sem.shape) <= 96
    assert set(sem.unique().tolist()) <= {0, 255}
    reports = [r for r in caplog.records if "outside 0..18" in r.getMessage()]
    assert len(reports) == 1 and "40: " in reports[0].getMessage()
    test = build_sem_seg_mapper(cfg, False)({"file_name": image, "sem_seg_file_name": label_file})
    assert (test["height"], test["width"]) == (80, 120) and "sem_seg" not in test
    assert test["image"].shape[1:] == (128, 192)


# ---- registration --------------------------------------------------------------------------------


def test_registration_is_lazy_and_errors_name_the_file(tmp_path):
    names = register_seg_datasets(str(tmp_path))
    assert {"gtav_train", "synthia_train", "urbansyn_train", "cityscapes_val", "bdd100k_val",
            "mapillary_val", "acdc_night_val", "acdc_val"} <= set(names)
    meta = MetadataCatalog.get("mapillary_val")
    assert meta.evaluator_type == "dg_sem_seg" and meta.ignore_label == 255
    assert meta.stuff_classes == list(CITYSCAPES_STUFF_CLASSES) and meta.domain == "mapillary"
    assert MetadataCatalog.get("acdc_fog_val").domain == "acdc_fog"
    with pytest.raises(DatasetFormatError, match=r"GTAV: image folder not found: .*gta/images"):
        DatasetCatalog.get("gtav_train")
    gta = tmp_path / "gta"
    save_png(gta / "images" / "00001.png", np.zeros((4, 6, 3), np.uint8))
    save_png(gta / "images" / "00002.png", np.zeros((4, 6, 3), np.uint8))
    save_png(gta / "labels" / "00001_labelTrainIds.png", np.zeros((4, 6), np.uint8))
    with pytest.raises(DatasetFormatError, match=r"1 of 2 image\(s\) have no label file, e\.g\. "
                       r".*00002_labelTrainIds\.png .*prepare_gtav\.py"):
        DatasetCatalog.get("gtav_train")
    save_png(gta / "labels" / "00002_labelTrainIds.png", np.zeros((4, 6), np.uint8))
    dicts = DatasetCatalog.get("gtav_train")
    assert [os.path.basename(d["sem_seg_file_name"]) for d in dicts] == [
        "00001_labelTrainIds.png", "00002_labelTrainIds.png"]


def test_acdc_and_bdd_layouts(tmp_path):
    register_seg_datasets(str(tmp_path))
    acdc = tmp_path / "acdc"
    stem = "GOPR0475_frame_000041"
    seq = "night/val/GOPR0475"
    save_png(acdc / "rgb_anon" / seq / f"{stem}_rgb_anon.png", np.zeros((4, 4, 3), np.uint8))
    save_png(acdc / "gt" / seq / f"{stem}_gt_labelTrainIds.png", np.zeros((4, 4), np.uint8))
    (d,) = DatasetCatalog.get("acdc_night_val")
    assert d["sem_seg_file_name"].endswith(f"gt/night/val/GOPR0475/{stem}_gt_labelTrainIds.png")
    with pytest.raises(DatasetFormatError, match="ACDC fog val: image folder not found"):
        DatasetCatalog.get("acdc_val")  # all four conditions: fog is missing
    bdd = tmp_path / "bdd100k"
    save_png(bdd / "images/10k/val/b1.jpg", np.zeros((4, 4, 3), np.uint8))
    save_png(bdd / "labels/sem_seg/masks/val/b1.png", np.zeros((4, 4), np.uint8))
    (d,) = DatasetCatalog.get("bdd100k_val")
    assert d["file_name"].endswith("b1.jpg") and d["sem_seg_file_name"].endswith("masks/val/b1.png")


def test_cityscapes_goes_through_detectron2_loader(tmp_path):
    register_seg_datasets(str(tmp_path))
    city = tmp_path / "cityscapes"
    base = "aachen_000000_000019"
    image = np.zeros((8, 16, 3), np.uint8)
    save_png(city / "leftImg8bit/val/aachen" / f"{base}_leftImg8bit.png", image)
    gt = city / "gtFine/val/aachen"
    for kind in ("labelIds", "instanceIds"):
        save_png(gt / f"{base}_gtFine_{kind}.png", np.zeros((8, 16), np.uint8))
    (gt / f"{base}_gtFine_polygons.json").write_text(
        json.dumps({"imgHeight": 8, "imgWidth": 16, "objects": []}))
    with pytest.raises(DatasetFormatError, match="createTrainIdLabelImgs"):
        DatasetCatalog.get("cityscapes_val")
    save_png(gt / f"{base}_gtFine_labelTrainIds.png", np.zeros((8, 16), np.uint8))
    (d,) = DatasetCatalog.get("cityscapes_val")
    assert (d["height"], d["width"]) == (8, 16)
    assert d["sem_seg_file_name"].endswith(f"{base}_gtFine_labelTrainIds.png")


# ---- label maps and preparation scripts ----------------------------------------------------------


def test_label_map_converts_and_reports_once(caplog):
    label_map = make_label_map("gtav")
    ids = np.array([[7, 8, 26, 0], [33, 40, 40, 250]], np.uint8)
    with caplog.at_level(logging.WARNING, logger="soma_d2.data.seg_datasets"):
        out = label_map(ids, "a.png")
        label_map(np.array([[40]], np.uint8), "b.png")
        assert label_map.report() == label_map.report()
    assert out.tolist() == [[0, 1, 13, 255], [18, 255, 255, 255]]
    expected = np.vectorize(lambda i: CITYSCAPES_ID_TO_TRAIN_ID.get(int(i), 255))(ids)
    assert (out == expected).all()
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1
    assert "40: 3 px in 2 file(s), e.g. a.png" in messages[0]
    assert "250: 1 px in 1 file(s)" in messages[0] and "33" not in messages[0].split(":", 1)[1]
    quiet = LabelMap("x", {1: 0}, [0, 1])
    quiet(np.array([[0, 1]], np.uint8))
    assert quiet.report() is None


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "datasets" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _palette_png(path: Path, ids: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(ids.astype(np.uint8), mode="P")
    im.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
    im.save(path)


def test_prepare_gtav_converts_palette_labels(tmp_path, capsys):
    ids = np.array([[7, 11, 24], [26, 34, 3]], np.uint8)  # 34 is not a Cityscapes label id
    for k in range(3):
        _palette_png(tmp_path / "gta" / "labels" / f"0000{k}.png", ids)
    assert _script("prepare_gtav").main(["--root", str(tmp_path / "gta"), "--workers", "1"]) == 0
    out = np.array(Image.open(tmp_path / "gta/labels/00001_labelTrainIds.png"))
    assert out.tolist() == [[0, 2, 11], [13, 255, 255]]
    lines = capsys.readouterr().out.splitlines()
    assert lines[-2].startswith("[prepare_gtav] 3/3 label files converted (100%")
    warnings = [ln for ln in lines if "WARNING" in ln]
    assert len(warnings) == 1 and "34: 3 px in 3 file(s)" in warnings[0]
    assert _script("prepare_gtav").main(["--root", str(tmp_path / "gta")]) == 0  # resumable
    assert "nothing to do" in capsys.readouterr().out
    assert _script("prepare_gtav").main(["--root", str(tmp_path / "none")]) == 1
    assert "label folder not found" in capsys.readouterr().err


def test_prepare_synthia_reads_16_bit_colour_labels(tmp_path, capsys):
    import cv2

    ids = np.array([[3, 4, 22], [10, 8, 1]], np.uint16)
    colour = np.stack([np.full_like(ids, 7), np.full_like(ids, 300), ids], axis=-1)  # BGR: R = id
    labels = tmp_path / "synthia" / "GT" / "LABELS"
    labels.mkdir(parents=True)
    cv2.imwrite(str(labels / "0000001.png"), colour)
    args = ["--root", str(tmp_path / "synthia"), "--workers", "1"]
    assert _script("prepare_synthia").main(args) == 0
    out = np.array(Image.open(labels / "0000001_labelTrainIds.png"))
    assert out.tolist() == [[0, 1, 255], [11, 13, 10]]
    assert "WARNING" not in capsys.readouterr().out


def test_prepare_mapillary_writes_train_id_folder(tmp_path, capsys):
    ids = np.array([[13, 24, 55], [19, 65, 70]], np.uint8)  # 70 is outside v1.2's 66 ids
    _palette_png(tmp_path / "mapillary/validation/v1.2/labels/m1.png", ids)
    _palette_png(tmp_path / "mapillary/training/labels/m2.png", ids)
    args = ["--root", str(tmp_path / "mapillary"), "--workers", "1"]
    assert _script("prepare_mapillary").main(args) == 0
    for split, name in (("validation", "m1"), ("training", "m2")):
        out = np.array(Image.open(tmp_path / f"mapillary/{split}/labels_trainIds/{name}.png"))
        assert out.tolist() == [[0, 0, 13], [11, 255, 255]]
    assert "70: 2 px in 2 file(s)" in capsys.readouterr().out


# ---- synthetic data ----------------------------------------------------------------------------


def test_synthetic_labels_match_the_scene(tmp_path):
    for i in range(4):
        image, objects = render_scene(np.random.default_rng([5, i]), "dusk_rainy", 128, "car")
        image2, objects2, label = render_scene_with_labels(
            np.random.default_rng([5, i]), "dusk_rainy", 128, "car")
        assert image.tobytes() == image2.tobytes() and objects == objects2
        lab = np.asarray(label)
        assert set(np.unique(lab)) <= set(SEG_TRAIN_IDS.values())
        assert (lab[0] == SEG_TRAIN_IDS["sky"]).all() and (lab[-1] == SEG_TRAIN_IDS["road"]).any()
        nearest = objects[-1]  # drawn last: nothing covers it
        x0, y0, x1, y1 = nearest.box
        assert (lab[y0 : y1 + 1, x0 : x1 + 1] == SEG_TRAIN_IDS[nearest.name]).mean() > 0.3


def test_synthetic_semseg_layout_and_registration(tmp_path):
    root = tmp_path / "seg"
    summary = generate_synthetic_semseg(str(root), 3, 64, seed=0, progress=False, workers=1)
    assert {"road", "sky", "car"} <= set(summary["daytime_clear"])
    names = register_synthetic_semseg(str(root), prefix="unitseg")
    sizes = {n: len(DatasetCatalog.get(n)) for n in names}
    assert sizes["unitseg_daytime_clear_train"] + sizes["unitseg_daytime_clear_test"] == 3
    assert sizes["unitseg_night_sunny"] == 3
    (rec,) = [r for r in DatasetCatalog.get("unitseg_night_sunny") if r["image_id"].endswith("1")]
    assert rec["file_name"].endswith("night_sunny/leftImg8bit/test/night_sunny/"
                                     "night_sunny_00001_leftImg8bit.png")
    assert MetadataCatalog.get("unitseg_night_sunny").domain == "night_sunny"
    image = np.asarray(Image.open(rec["file_name"]))
    ref, _ = render_scene(np.random.default_rng([0, 1, 1]), "night_sunny", 64, "bike",
                          domain_textures(0, 1, 64))
    assert (image == np.asarray(ref)).all()  # the detection variant's scene, losslessly


# ---- evaluator ---------------------------------------------------------------------------------


def _register_eval_set(tmp_path: Path, name: str, labels: list[np.ndarray]) -> list[dict]:
    records = []
    for k, lab in enumerate(labels):
        records.append({
            "file_name": str(tmp_path / f"{name}_{k}.png"),
            "sem_seg_file_name": save_png(tmp_path / f"{name}_{k}_gt.png", lab),
        })
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: records)
    MetadataCatalog.get(name).set(**sem_seg_metadata("eval_domain"))
    return records


def _predictions(rng, labels):
    outs = []
    for lab in labels:
        logits = torch.from_numpy(rng.normal(size=(19, *lab.shape))).float()
        # make most predictions right so that IoUs are far from 0
        good = torch.from_numpy(rng.random(lab.shape) < 0.7) & torch.from_numpy(lab < 19)
        target = torch.from_numpy(lab.astype(np.int64)).clamp(max=18)
        logits[target[None].expand_as(logits).eq(torch.arange(19)[:, None, None]) & good] += 10
        outs.append({"sem_seg": logits})
    return outs


def _run(evaluator, records, outputs):
    evaluator.reset()
    evaluator.process([{"file_name": r["file_name"]} for r in records], outputs)
    return evaluator.evaluate()["sem_seg"]


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_evaluator_agrees_with_detectron2(tmp_path):
    rng = np.random.default_rng(0)
    labels = [rng.choice([*range(17), 255], size=(24, 32)).astype(np.uint8) for _ in range(3)]
    records = _register_eval_set(tmp_path, "unit_semseg_eval", labels)
    outputs = _predictions(rng, labels)
    ours = _run(DGSemSegEvaluator("unit_semseg_eval", str(tmp_path / "ours"), distributed=False),
                records, outputs)
    theirs = _run(SemSegEvaluator("unit_semseg_eval", distributed=False, output_dir=None,
                                  sem_seg_loading_fn=lambda f, dtype: np.asarray(
                                      Image.open(f), dtype=dtype).copy()),
                  records, outputs)
    assert ours.keys() == theirs.keys()
    for key in theirs:
        np.testing.assert_allclose(ours[key], theirs[key], err_msg=key)
    assert 50 < ours["mIoU"] < 100 and np.isnan(ours["IoU-motorcycle"])  # class 17 absent
    saved = json.loads((tmp_path / "ours" / "sem_seg_evaluation.json").read_text())
    assert saved["mIoU"] == pytest.approx(ours["mIoU"])


def test_evaluator_counts_unknown_ids_as_ignore_and_checks_sizes(tmp_path, caplog):
    rng = np.random.default_rng(1)
    clean = [rng.choice([*range(19), 255], size=(16, 16)).astype(np.uint8) for _ in range(2)]
    dirty = [lab.copy() for lab in clean]
    dirty[0][:2] = 77
    dirty[1][:1] = 77
    outputs = _predictions(rng, clean)
    for lab in clean:
        lab[:2 if lab is clean[0] else 1] = 255
    records = _register_eval_set(tmp_path, "unit_semseg_dirty", dirty)
    evaluator = DGSemSegEvaluator("unit_semseg_dirty", distributed=False)
    with caplog.at_level(logging.WARNING):
        ours = _run(evaluator, records, outputs)
    reports = [r.getMessage() for r in caplog.records if "77: 48 px in 2 file(s)" in r.getMessage()]
    assert len(reports) == 1
    clean_records = _register_eval_set(tmp_path, "unit_semseg_clean", clean)
    reference = _run(DGSemSegEvaluator("unit_semseg_clean", distributed=False), clean_records,
                     outputs)
    assert ours["mIoU"] == pytest.approx(reference["mIoU"])
    evaluator.reset()
    with pytest.raises(DatasetFormatError, match="label is 16x16 but the prediction .* 16x20"):
        evaluator.process([{"file_name": records[0]["file_name"]}],
                          [{"sem_seg": torch.zeros(19, 16, 20)}])


def test_unexpected_label_ids_one_rule_for_numpy_and_torch():
    from soma_d2.data.seg_labels import UnexpectedLabelIds

    guard = UnexpectedLabelIds(num_classes=19, ignore_label=255)
    label = np.array([[0, 18, 19], [255, 40, 40]], np.uint8)
    out = guard.apply(label, "a.png")
    assert out.tolist() == [[0, 18, 255], [255, 255, 255]] and label[0, 2] == 19  # input kept
    tensor = guard.apply(torch.as_tensor(label.astype(np.int64)), "b.png")
    assert tensor.tolist() == out.tolist()
    other = UnexpectedLabelIds(19)
    other.apply(np.array([[-1, 3]]), "c.png")
    guard.merge(other)
    assert dict(guard.pixels) == {19: 2, 40: 4, -1: 1} and guard.files[40] == 2
    assert guard.summary().startswith("-1: 1 px in 1 file(s), e.g. c.png, 19: 2 px in 2 file(s)")
    assert guard.apply(np.array([[1, 255]]), "d.png").tolist() == [[1, 255]]
