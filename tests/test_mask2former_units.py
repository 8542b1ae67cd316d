"""Mask2Former project units: the ViT-L recipe config builds (parameter table, optimizer groups),
raw-tap features, slide == whole inference, semantic inference, input pipeline (per-target test
resize, mmseg photometric distortion), the official Mapillary label conversion, bad input."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from detectron2.modeling import build_model
from soma_mask2former import SoMAMask2Former, convert_transformers_mask2former, semantic_inference
from soma_mask2former.criterion import SetCriterion, semantic_targets
from soma_mask2former.mapper import mask2former_semseg
from soma_mask2former.transforms import _PhotoMetricTransform, keep_ratio_size
from torch.nn import functional as F

from soma_d2.config import build_cfg
from soma_d2.data.seg_labels import (
    CITYSCAPES_STUFF_CLASSES,
    MAPILLARY_ID_TO_TRAIN_ID,
    MAPILLARY_V12_NAMES,
)
from soma_d2.solver.optimizer import build_optimizer

ROOT = Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "configs" / "demo" / "synthetic_mask2former_semseg.yaml")
RECIPE = str(ROOT / "configs" / "gta2cbm_soma_semseg.yaml")


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_model(build_cfg(DEMO)).eval()


# ---- the paper's model at ViT-L --------------------------------------------------------------


def test_recipe_config_builds_vit_l_with_official_groups():
    cfg = build_cfg(RECIPE, ["MODEL.DEVICE", "cpu"])
    s, m = cfg.SOLVER, cfg.MODEL
    assert (s.BASE_LR, s.BACKBONE_LR_MULT, s.BACKBONE_WD_MULT, s.MAX_ITER) == (1e-4, 0.5, 1.0, 40000)
    assert (s.LR_SCHEDULER_NAME, s.POLY_POWER, s.WARMUP_ITERS, s.IMS_PER_BATCH) == (
        "WarmupPolyLR", 0.9, 0, 4)
    assert (m.EMA.ENABLED, m.EMA.DECAY, m.EMA.START_ITER) == (True, 0.9998, 11999)
    assert tuple(m.SEM_SEG_INFERENCE.CROP_SIZE) == (512, 512)
    assert tuple(m.SEM_SEG_INFERENCE.STRIDE) == (341, 341)
    torch.manual_seed(0)
    model = build_model(cfg)
    assert isinstance(model, SoMAMask2Former)
    head = model.sem_seg_head
    assert len(head.pixel_decoder.encoder) == 6 and len(head.transformer_decoder.layers) == 9
    assert head.transformer_decoder.query_feat.weight.shape == (100, 256)
    assert head.transformer_decoder.cls_embed.out_features == 20
    assert [c[0].in_channels for c in head.pixel_decoder.input_convs] == [1024] * 3
    parts: dict[str, list[int]] = {}
    for name, p in model.named_parameters():
        part = parts.setdefault(".".join(name.split(".")[:2]), [0, 0])
        part[0] += p.numel()
        part[1] += p.numel() if p.requires_grad else 0
    # sheet 3.2: 16 adapted blocks x 304,128 (adapters + biases) + mask_token
    assert parts["backbone.net"][1] == 16 * 304_128 + 1024
    assert parts["sem_seg_head.pixel_decoder"] == [6_101_440, 6_101_440]
    assert parts["sem_seg_head.transformer_decoder"] == [14_463_764, 14_463_764]
    groups = {}
    for g in build_optimizer(cfg, model).param_groups:
        for n in g["param_names"]:
            groups[n] = (g["lr"], g["weight_decay"])
    td = "sem_seg_head.transformer_decoder."
    for name in ("query_embed.weight", "query_feat.weight", "level_embed.weight",
                 "post_norm.weight", "layers.0.norm1.bias"):
        assert groups[td + name] == (1e-4, 0.0), name
    assert groups["sem_seg_head.pixel_decoder.level_encoding.weight"] == (1e-4, 0.05)
    assert groups["sem_seg_head.pixel_decoder.input_convs.0.1.weight"] == (1e-4, 0.0)  # GN
    assert groups[td + "cls_embed.weight"] == (1e-4, 0.05)
    assert groups["backbone.net.blocks.8.attn.q.A"] == (5e-5, 0.05)
    assert groups["backbone.net.blocks.23.mlp.fc2.bias"] == (5e-5, 0.05)
    with torch.no_grad():
        feats = model.backbone(torch.zeros(1, 3, 64, 96))
    assert {k: tuple(v.shape) for k, v in feats.items()} == {
        "res2": (1, 1024, 16, 24), "res3": (1, 1024, 8, 12), "res4": (1, 1024, 4, 6),
        "res5": (1, 1024, 2, 3)}


def test_every_official_setting_has_a_config():
    expect = {  # config: (train sets, crop, EMA start or None, test sets, BDD test size)
        "gta2cbm_soma_semseg": (("gtav_train",), 512, 11999, 3, 720),
        "gs2cbm_soma_semseg": (("gtav_train", "synthia_train"), 512, None, 3, 720),
        "gsu2cbm_soma_semseg": (("gtav_train", "synthia_train", "urbansyn_train"), 512, None, 3,
                                720),
        "gsu2cbm_1024_soma_semseg": (("gtav_train", "synthia_train", "urbansyn_train"), 1024,
                                     15999, 3, 1024),
        "gsuc16_2cbm_1024_soma_semseg": (("cityscapes_train",), 1024, None, 3, 1024),
        "c2bm_soma_semseg": (("cityscapes_train",), 512, 19999, 2, 720),
        "c2acdc_1024_soma_semseg": (("cityscapes_train",), 1024, 19999, 4, 720),
        "c2acdc_512_soma_semseg": (("cityscapes_train",), 512, 19999, 4, 720),
    }
    for name, (train, crop, ema, n_test, bdd_short) in expect.items():
        cfg = build_cfg(str(ROOT / "configs" / f"{name}.yaml"))
        assert cfg.DATASETS.TRAIN == train, name
        assert tuple(cfg.INPUT.CROP.SIZE) == (crop, crop) and cfg.MODEL.VIT.IMG_SIZE == crop
        assert tuple(cfg.MODEL.SEM_SEG_INFERENCE.CROP_SIZE) == (crop, crop)
        assert cfg.MODEL.SEM_SEG_INFERENCE.STRIDE[0] == {512: 341, 1024: 683}[crop]
        assert (cfg.MODEL.EMA.START_ITER if cfg.MODEL.EMA.ENABLED else None) == ema, name
        assert len(cfg.DATASETS.TEST) == n_test and cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA == 0.75
        rules = {r[0]: tuple(r[1:]) for r in cfg.MODEL.MASK2FORMER.TEST_RESIZE}
        assert rules["bdd100k"][1] == bdd_short and rules["cityscapes"] == (2048, 1024)
        assert rules["acdc"] == (1920, 1080) and rules["mapillary"] == (2048, 1024)
    c2bm = build_cfg(str(ROOT / "configs" / "c2bm_soma_semseg.yaml")).SOLVER
    assert (c2bm.IMS_PER_BATCH, c2bm.WARMUP_ITERS, c2bm.WARMUP_FACTOR) == (8, 1500, 0.01)
    acdc = build_cfg(str(ROOT / "configs" / "c2acdc_1024_soma_semseg.yaml"))
    assert (acdc.SOLVER.WARMUP_ITERS, acdc.SOLVER.WARMUP_FACTOR) == (10000, 1e-6)
    assert acdc.INPUT.MIN_SIZE_TRAIN[-1] == 2048 and acdc.INPUT.MAX_SIZE_TRAIN == 4096
    eff = build_cfg(str(ROOT / "configs" / "gsuc16_2cbm_1024_soma_semseg.yaml"))
    assert (eff.SOLVER.BASE_LR, eff.SOLVER.MAX_ITER, eff.TEST.EVAL_PERIOD) == (1e-5, 4000, 400)
    assert eff.MODEL.MASK2FORMER.TRAIN_RESIZE == "ratio"


def test_full_finetune_baseline_freezes_norms_scales_and_embeddings():
    cfg = build_cfg(str(ROOT / "configs" / "gta2cbm_full_ft_semseg.yaml"))
    assert (cfg.SOLVER.BACKBONE_LR_MULT, cfg.SOLVER.WEIGHT_DECAY_SCHEDULE) == (0.01, "constant")
    assert not cfg.MODEL.EMA.ENABLED
    frozen = build_cfg(str(ROOT / "configs" / "gta2cbm_frozen_semseg.yaml"))
    assert frozen.SOLVER.WEIGHT_DECAY_SCHEDULE == "constant" and not frozen.MODEL.EMA.ENABLED
    tiny = build_cfg(DEMO, ["MODEL.SOMA.MODE", "full_finetune",
                            "MODEL.MASK2FORMER.FREEZE_BACKBONE_PATTERNS",
                            str(list(cfg.MODEL.MASK2FORMER.FREEZE_BACKBONE_PATTERNS))])
    net = build_model(tiny).backbone.net
    train = {n for n, p in net.named_parameters() if p.requires_grad}
    assert "blocks.0.attn.q.weight" in train and "blocks.3.mlp.fc2.bias" in train
    for n, _ in net.named_parameters():
        if any(k in n for k in ("norm", "ls1", "ls2", "pos_embed", "patch_embed")):
            assert n not in train, n
    released = build_cfg(str(ROOT / "configs" / "gta2cbm_released_semseg.yaml"))
    assert released.MODEL.SOMA.MODE == "released"
    net = build_model(build_cfg(DEMO, ["MODEL.SOMA.MODE", "released"])).backbone.net
    assert net.soma_report is not None and any("blocks.3.mlp.fc1.A" in n
                                                for n, p in net.named_parameters()
                                                if p.requires_grad)


# ---- features and inference ------------------------------------------------------------------


def test_features_are_the_raw_taps_resized(tiny):
    net = tiny.backbone.net
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        feats = tiny.backbone(x)
        tokens, _ = net.prepare_tokens(x, None)
        raw = []
        for block in net.blocks:
            tokens = block(tokens)
            grid = tokens[:, net.num_prefix_tokens:].transpose(1, 2).reshape(1, -1, 4, 6)
            raw.append(grid)
    for (name, scale), r in zip((("res2", 4.0), ("res3", 2.0), ("res4", 1.0), ("res5", 0.5)),
                                raw):
        want = r if scale == 1 else F.interpolate(r, scale_factor=scale, mode="bilinear",
                                                  align_corners=False)
        torch.testing.assert_close(feats[name], want)


def test_slide_equals_whole_when_one_window_covers_the_image(tiny):
    for h, w in ((96, 96), (64, 80)):  # window 96: exactly one window, and a smaller image
        image = torch.randn(1, 3, h, w)
        with torch.no_grad():
            whole = tiny.whole_inference(image)
            slide = tiny.slide_inference(image)
        assert whole.shape == (1, 19, h, w)
        torch.testing.assert_close(slide, whole, atol=1e-6, rtol=0)
    with torch.no_grad():  # several windows still cover every pixel with valid scores
        out = tiny.slide_inference(torch.randn(1, 3, 128, 160))
    assert out.shape == (1, 19, 128, 160) and torch.isfinite(out).all() and (out >= 0).all()


def test_training_inputs_are_padded_to_the_crop(tiny):
    assert tiny.train_pad_size == (96, 96)
    image, label = torch.ones(3, 40, 70), torch.zeros(40, 70)
    tiny.train()
    try:
        padded = tiny._pad([image]).tensor
        labels = tiny._pad([label], 255).tensor
    finally:
        tiny.eval()
    assert padded.shape == (1, 3, 96, 96) and labels.shape == (1, 96, 96)
    assert padded[0, :, :40, :70].eq(1).all() and padded[0, :, 40:].eq(0).all()
    assert labels[0, :40, :70].eq(0).all() and labels[0, :, 70:].eq(255).all()
    assert tiny._pad([image]).tensor.shape == (1, 3, 64, 96)  # evaluation: divisibility only


def test_semantic_inference_is_softmax_times_sigmoid():
    cls, masks = torch.randn(2, 5, 4), torch.randn(2, 5, 6, 8)
    out = semantic_inference(cls, masks, (12, 16))
    up = F.interpolate(masks, size=(12, 16), mode="bilinear", align_corners=False).sigmoid()
    probs = cls.softmax(-1)
    for b in range(2):
        for c in range(3):
            want = sum(probs[b, q, c] * up[b, q] for q in range(5))
            torch.testing.assert_close(out[b, c], want)


def test_criterion_handles_an_image_without_labels():
    crit = SetCriterion(3, num_points=64)
    labels = torch.full((2, 16, 16), 255)
    labels[1, :8] = 1
    targets = semantic_targets(labels)
    assert targets[0][0].numel() == 0 and targets[1][0].tolist() == [1]
    preds = [(torch.randn(2, 4, 4, requires_grad=True), torch.randn(2, 4, 8, 8,
                                                                     requires_grad=True))] * 2
    losses = crit(preds, targets)
    assert set(losses) == {"loss_ce", "loss_mask", "loss_dice", "loss_ce_0", "loss_mask_0",
                           "loss_dice_0"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()


# ---- input pipeline --------------------------------------------------------------------------


@pytest.mark.parametrize("hw, rule, want", [
    ((1024, 2048), (2048, 1024), (1024, 2048)),  # Cityscapes
    ((720, 1280), (1280, 720), (720, 1280)),  # BDD at 512
    ((720, 1280), (2048, 1024), (1024, 1820)),  # BDD at 1024 (sheet: about 1820x1024)
    ((1500, 2000), (2048, 1024), (1024, 1365)),  # a half-size Mapillary image
    ((1080, 1920), (1920, 1080), (1080, 1920)),  # ACDC
])
def test_keep_ratio_size_matches_mmcv(hw, rule, want):
    assert keep_ratio_size(*hw, *rule) == want


def test_test_resize_follows_the_image_data_set(tmp_path):
    cfg = build_cfg(RECIPE)
    mapper = mask2former_semseg(cfg, is_train=False)
    for folder, want in (("bdd100k", (720, 1280)), ("cityscapes", (1024, 2048)),
                         ("mapillary", (1024, 1365)), ("acdc", (1080, 1920)),
                         ("elsewhere", (1024, 1365))):
        path = tmp_path / folder / "img.png"
        path.parent.mkdir()
        size = {"bdd100k": (1280, 720), "mapillary": (2000, 1500), "cityscapes": (2048, 1024),
                "acdc": (1920, 1080)}.get(folder, (1000, 750))  # (w, h)
        cv2.imwrite(str(path), np.zeros((size[1], size[0], 3), np.uint8))
        out = mapper({"file_name": str(path)})
        assert tuple(out["image"].shape[1:]) == want, folder
        assert (out["height"], out["width"]) == (size[1], size[0])


def test_bad_test_resize_names_the_key():
    for bad in ('[["bdd100k", 1280]]', '[["bdd100k", 0, 720]]', '[[1, 2, 3]]'):
        cfg = build_cfg(DEMO, ["MODEL.MASK2FORMER.TEST_RESIZE", bad])
        with pytest.raises(ValueError, match="MODEL.MASK2FORMER.TEST_RESIZE"):
            mask2former_semseg(cfg, is_train=False)
    cfg = build_cfg(DEMO, ["MODEL.MASK2FORMER.TRAIN_RESIZE", "random"])
    with pytest.raises(ValueError, match="MODEL.MASK2FORMER.TRAIN_RESIZE"):
        mask2former_semseg(cfg, is_train=True)


def test_photometric_distortion_matches_mmseg_steps():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)

    def clip(x):
        return np.clip(x, 0, 255).astype(np.uint8)

    out = _PhotoMetricTransform(40.0, 1.3, False, 0.7, 5, rgb=True).apply_image(img)
    want = clip(img.astype(np.float32) + 40.0)
    hsv = cv2.cvtColor(want, cv2.COLOR_RGB2HSV)
    hsv[..., 1] = clip(hsv[..., 1].astype(np.float32) * 0.7)
    want = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    hsv = cv2.cvtColor(want, cv2.COLOR_RGB2HSV)
    hsv[..., 0] = (hsv[..., 0].astype(int) + 5) % 180
    want = clip(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB).astype(np.float32) * 1.3)
    np.testing.assert_array_equal(out, want)


def test_meta_arch_refuses_another_backbone_and_unfit_windows():
    with pytest.raises(ValueError, match="MODEL.BACKBONE.NAME"):
        build_model(build_cfg(DEMO, ["MODEL.BACKBONE.NAME", "build_soma_vit_backbone"]))
    with pytest.raises(ValueError, match="MODEL.SEM_SEG_INFERENCE.CROP_SIZE"):
        build_model(build_cfg(DEMO, ["MODEL.SEM_SEG_INFERENCE.CROP_SIZE", "(100, 96)",
                                     "MODEL.SEM_SEG_INFERENCE.STRIDE", "(64, 64)"]))


def test_converter_refuses_unknown_keys():
    with pytest.raises(KeyError, match="cannot place"):
        convert_transformers_mask2former({"model.transformer_module.something.weight":
                                          torch.zeros(1)})


# ---- labels ----------------------------------------------------------------------------------

# the official conversion (tools/convert_datasets/mapillary2cityscape.py) applied to the v1.2 names
SHEET_MAPILLARY = {
    "road": [7, 8, 10, 13, 14, 23, 24], "sidewalk": [2, 9, 11, 15], "building": [17],
    "wall": [6], "fence": [3], "pole": [44, 45, 47], "traffic light": [48],
    "traffic sign": [46, 49, 50], "vegetation": [30], "terrain": [29], "sky": [27],
    "person": [19], "rider": [20, 21, 22], "car": [55], "truck": [61], "bus": [54],
    "train": [58], "motorcycle": [57], "bicycle": [52],
}


def test_mapillary_mapping_matches_the_sheet_label_by_label():
    assert len(MAPILLARY_V12_NAMES) == 66
    want = {i: CITYSCAPES_STUFF_CLASSES.index(c) for c, ids in SHEET_MAPILLARY.items()
            for i in ids}
    for i, name in enumerate(MAPILLARY_V12_NAMES):
        assert MAPILLARY_ID_TO_TRAIN_ID.get(i, 255) == want.get(i, 255), (i, name)


# ---- data-efficiency subset list and bad labels ------------------------------------------------


def test_subset_list_restricts_training_and_names_missing_images(tmp_path):
    from detectron2.data import DatasetCatalog
    from soma_mask2former.subset import restrict_to_subset

    from soma_d2.data.catalog import DatasetFormatError

    records = [{"file_name": f"/d/leftImg8bit/train/a/a_{i}_leftImg8bit.png"} for i in range(4)]
    for name in ("m2f_subset_a", "m2f_subset_b"):
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
    DatasetCatalog.register("m2f_subset_a", lambda: list(records))
    DatasetCatalog.register("m2f_subset_b", lambda: list(records))
    good = tmp_path / "train_1_16.txt"
    good.write_text("a/a_1\n\na/a_3_leftImg8bit.png\n")
    cfg = build_cfg(DEMO, ["DATASETS.TRAIN", '("m2f_subset_a",)',
                           "MODEL.MASK2FORMER.TRAIN_SUBSET_LIST", str(good)])
    mask2former_semseg(cfg, is_train=True)
    mask2former_semseg(cfg, is_train=True)  # idempotent
    kept = DatasetCatalog.get("m2f_subset_a")
    assert [r["file_name"] for r in kept] == [records[1]["file_name"], records[3]["file_name"]]
    bad = tmp_path / "bad.txt"
    bad.write_text("a/a_1\na/a_9\n")
    restrict_to_subset(["m2f_subset_b"], str(bad))
    with pytest.raises(DatasetFormatError, match=r"bad.txt.*a_9"):
        DatasetCatalog.get("m2f_subset_b")
    cfg.MODEL.MASK2FORMER.TRAIN_SUBSET_LIST = str(tmp_path / "absent.txt")
    with pytest.raises(FileNotFoundError, match="MODEL.MASK2FORMER.TRAIN_SUBSET_LIST"):
        mask2former_semseg(cfg, is_train=True)


def test_unknown_label_ids_are_ignored_and_reported_once(tmp_path, caplog):
    import logging

    image, label = tmp_path / "x.png", tmp_path / "x_label.png"
    cv2.imwrite(str(image), np.full((64, 64, 3), 100, np.uint8))
    lab = np.zeros((64, 64), np.uint8)
    lab[:, :32] = 40  # not a train id
    cv2.imwrite(str(label), lab)
    mapper = mask2former_semseg(build_cfg(DEMO, ["INPUT.CROP.ENABLED", "False"]), True)
    with caplog.at_level(logging.WARNING, logger="soma_d2.data.seg_mapper"):
        out = mapper({"file_name": str(image), "sem_seg_file_name": str(label)})
        mapper({"file_name": str(image), "sem_seg_file_name": str(label)})
    assert set(out["sem_seg"].unique().tolist()) <= {0, 255} and (out["sem_seg"] == 255).any()
    reports = [r for r in caplog.records if "outside" in r.getMessage()]
    assert len(reports) == 1 and "40:" in reports[0].getMessage()
    assert str(label) in reports[0].getMessage()


def test_acdc_test_export_writes_label_ids(tmp_path):
    from soma_mask2former.export import export_acdc_test

    from soma_d2.data.seg_labels import CITYSCAPES_ID_TO_TRAIN_ID

    for cond, h, w in (("night", 96, 128), ("fog", 64, 96)):
        folder = tmp_path / "acdc" / "rgb_anon" / cond / "test" / "GOPR0001"
        folder.mkdir(parents=True)
        cv2.imwrite(str(folder / f"{cond}_0001_rgb_anon.png"), np.zeros((h, w, 3), np.uint8))
    cfg = build_cfg(DEMO)
    torch.manual_seed(0)
    model = build_model(cfg)
    n = export_acdc_test(cfg, model, str(tmp_path / "acdc"), str(tmp_path / "out"),
                         conditions=("night", "fog"))
    assert n == 2
    out = cv2.imread(str(tmp_path / "out/night/test/GOPR0001/night_0001_rgb_anon.png"),
                     cv2.IMREAD_UNCHANGED)
    assert out.shape == (96, 128) and set(np.unique(out)) <= set(CITYSCAPES_ID_TO_TRAIN_ID)
    from soma_d2.data.catalog import DatasetFormatError

    with pytest.raises(DatasetFormatError, match="snow"):
        export_acdc_test(cfg, model, str(tmp_path / "acdc"), str(tmp_path / "out"),
                         conditions=("snow",))


def test_acdc_submission_tool_writes_the_checkpoints_predictions(tmp_path, capsys):
    """projects/Mask2Former/tools/export_acdc_submission.py loads a checkpoint the way the other
    export tools do (soma_d2.engine.export) and writes what export_acdc_test writes for it."""
    import importlib.util

    from soma_mask2former.export import export_acdc_test

    rng = np.random.default_rng(0)
    for cond in ("fog", "night", "rain", "snow"):  # the tool exports all four conditions
        folder = tmp_path / "acdc" / "rgb_anon" / cond / "test" / "GOPR0002"
        folder.mkdir(parents=True)
        cv2.imwrite(str(folder / f"{cond}_0002_rgb_anon.png"),
                    rng.integers(0, 255, (64, 96, 3), np.uint8))
    cfg = build_cfg(DEMO)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():  # weights a fresh build (same seed) does not have, so loading matters
        for p in model.sem_seg_head.parameters():
            p.add_(torch.randn_like(p))
    torch.save({"model": model.state_dict()}, tmp_path / "model.pth")
    spec = importlib.util.spec_from_file_location(
        "export_acdc_submission", ROOT / "projects/Mask2Former/tools/export_acdc_submission.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.main(["--config-file", DEMO, "--weights", str(tmp_path / "model.pth"),
                      "--output", str(tmp_path / "tool"), "--acdc-root", str(tmp_path / "acdc")]) == 0
    assert "wrote 4 predictions" in capsys.readouterr().out
    export_acdc_test(cfg, model, str(tmp_path / "acdc"), str(tmp_path / "direct"))
    rel = "rain/test/GOPR0002/rain_0002_rgb_anon.png"
    tool_png = cv2.imread(str(tmp_path / "tool" / rel), cv2.IMREAD_UNCHANGED)
    direct_png = cv2.imread(str(tmp_path / "direct" / rel), cv2.IMREAD_UNCHANGED)
    assert tool_png.shape == (64, 96) and np.array_equal(tool_png, direct_png)


def test_prepare_mapillary_writes_the_official_mapping_and_half_size_copy(tmp_path):
    import importlib.util

    from PIL import Image

    spec = importlib.util.spec_from_file_location(
        "prepare_mapillary", ROOT / "datasets" / "prepare_mapillary.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    val = tmp_path / "mapillary" / "validation"
    (val / "labels").mkdir(parents=True)
    (val / "images").mkdir()
    ids = np.zeros((40, 60), np.uint8)
    ids[:, 20:40], ids[:, 40:] = 41, 9  # manhole (ignore), curb cut (sidewalk); 0 bird (ignore)
    label = Image.fromarray(ids, mode="P")
    label.putpalette([v for i in range(256) for v in (i, i, i)])
    label.save(val / "labels" / "m1.png")
    Image.fromarray(np.full((40, 60, 3), 128, np.uint8)).save(val / "images" / "m1.jpg")
    assert script.main(["--root", str(tmp_path / "mapillary"), "--workers", "1"]) == 0
    full = np.array(Image.open(val / "labels_trainIds" / "m1.png"))
    assert full[0, 0] == 255 and full[0, 30] == 255 and full[0, 50] == 1
    half = np.array(Image.open(val / "half" / "labels_trainIds" / "m1.png"))
    assert half.shape == (20, 30) and half[0, 25] == 1 and half[0, 5] == 255
    with Image.open(val / "half" / "images" / "m1.jpg") as im:
        assert im.size == (30, 20)


@pytest.mark.parametrize("opts, match", [
    (["MODEL.BACKBONE.NAME", "build_soma_vit_backbone"],
     "needs MODEL.BACKBONE.NAME='build_soma_vit_taps_backbone'"),
    (["MODEL.SEM_SEG_HEAD.NAME", "SemSegFPNHead"], "needs MODEL.SEM_SEG_HEAD.NAME"),
    (["MODEL.SEM_SEG_INFERENCE.MODE", "slide", "MODEL.SEM_SEG_INFERENCE.CROP_SIZE", "(80, 96)",
      "MODEL.SEM_SEG_INFERENCE.STRIDE", "(64, 64)"], r"CROP_SIZE=\(80, 96\).*stride 32"),
])
def test_bad_configs_fail_when_the_config_is_built(opts, match):
    # validate_mask2former_config runs inside build_cfg, before any model exists
    with pytest.raises(ValueError, match=match):
        build_cfg(DEMO, opts)
