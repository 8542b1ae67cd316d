"""configs/dwd_soma.yaml builds the paper's Co-DINO at ViT-L/16 (CPU, no weights): the parameter
table per part and the optimizer groups against the official model and recipe
(DGOD/configs/_base_/models/dinov2_codetr.py, DGOD/configs/sora/sora_dinov2-L_codetr_dg.py); and bad
configs fail before training with the key and value at fault."""
from __future__ import annotations

import os

import pytest
import torch
from detectron2.modeling import build_model
from soma_codino.summary import parameter_table

from soma_d2.config import build_cfg
from soma_d2.solver import build_optimizer
from soma_d2.solver.optimizer import format_param_groups

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OFFICIAL = os.path.join(REPO, "configs", "dwd_soma.yaml")
TINY = os.path.join(REPO, "configs", "test", "tiny_codino.yaml")


@pytest.fixture(scope="module")
def official():
    cfg = build_cfg(OFFICIAL, ["MODEL.DEVICE", "cpu", "DATASETS.TRAIN", "()",
                               "DATASETS.TEST", "()"])
    torch.manual_seed(0)
    model = build_model(cfg)
    return cfg, model


def test_official_recipe_values(official):
    cfg, model = official
    s = cfg.SOLVER
    assert cfg.MODEL.META_ARCHITECTURE == "SoMACoDINO"
    vit = cfg.MODEL.VIT
    assert (vit.ARCH, vit.PATCH_SIZE, vit.IMG_SIZE) == ("vit_l", 16, 1024)
    assert list(cfg.MODEL.VIT.OUT_INDICES) == [7, 11, 15, 23]
    assert (s.BASE_LR, s.BACKBONE_LR_MULT, s.BACKBONE_WD_MULT) == (2e-4, .5, .2)
    assert s.WEIGHT_DECAY == 0.05
    assert tuple(s.STEPS) == (25500, 33500) and s.MAX_ITER == 40000 and s.WARMUP_ITERS == 1500
    assert (s.WARMUP_FACTOR, s.IMS_PER_BATCH, s.CHECKPOINT_PERIOD) == (0.01, 8, 4000)
    assert cfg.TEST.EVAL_PERIOD == 4000 and not s.AMP.ENABLED
    assert (s.CLIP_GRADIENTS.CLIP_TYPE, s.CLIP_GRADIENTS.CLIP_VALUE) == ("full_model", 35.0)
    c = cfg.MODEL.CODINO
    assert (c.NUM_QUERIES, c.ENC_LAYERS, c.DEC_LAYERS) == (900, 6, 6)
    assert (c.HIDDEN_DIM, c.FFN_DIM, c.NUM_HEADS, c.NUM_POINTS) == (256, 2048, 8, 4)
    assert len(model.query_head.cls_branches) == 7 and len(model.query_head.reg_branches) == 7


def test_parameter_table_matches_the_fact_sheet(official):
    cfg, model = official
    table = parameter_table(model)
    print("\nparameter table:", table)
    # sheet 3.2: 16 blocks x (adapters 294,912 + biases 9,216) = 4,866,048, plus mask_token 1,024
    assert table["vit"]["trainable"] == 4_866_048 + 1_024
    assert table["vit"]["frozen"] > 300_000_000
    # ChannelMapper: 4 x (1024*256 + GN 512) + 3x3 s2 conv 1024*256*9 + GN 512
    assert table["neck"]["trainable"] == 4 * (1024 * 256 + 512) + 1024 * 256 * 9 + 512
    # one MSDA (8 heads, 5 levels, 4 points): offsets 256*320+320, weights 256*160+160,
    # value and output projections 2 x (256^2 + 256)
    msda = 256 * 320 + 320 + 256 * 160 + 160 + 2 * (256 * 256 + 256)
    ffn = 256 * 2048 + 2048 + 2048 * 256 + 256
    assert table["encoder"]["trainable"] == 6 * (msda + ffn + 2 * 512)
    mha = 4 * 256 * 256 + 4 * 256
    ref_head = 512 * 256 + 256 + 256 * 256 + 256
    assert table["decoder"]["trainable"] == 6 * (mha + msda + ffn + 3 * 512) + ref_head + 512
    assert all(v["frozen"] == 0 for k, v in table.items() if k != "vit")
    assert table["aux rcnn (RPN + RoI)"]["trainable"] > 0 and table["aux atss"]["trainable"] > 0


def test_optimizer_groups_match_the_fact_sheet(official):
    cfg, model = official
    opt = build_optimizer(cfg, model)
    print("\n" + format_param_groups(opt, model))
    by_name = {}
    for g in opt.param_groups:
        for n in g["param_names"]:
            by_name[n] = (g["lr"], g["weight_decay"])
    adapters = [n for n in by_name
                if n.startswith("backbone.net.") and n != "backbone.net.mask_token"]
    assert adapters and all(by_name[n] == pytest.approx((1e-4, 0.01)) for n in adapters)
    assert by_name["query_head.query_embed.weight"] == (2e-4, 0.0)
    assert by_name["query_head.level_embed"] == (2e-4, 0.0)
    assert by_name["query_head.decoder.norm.weight"] == (2e-4, 0.0)
    assert by_name["query_head.enc_output_norm.weight"] == (2e-4, 0.0)
    assert by_name["neck.convs.0.1.weight"] == (2e-4, 0.0)  # GroupNorm
    assert by_name["query_head.dn_generator.label_embedding.weight"] == (2e-4, 0.05)
    assert by_name["query_head.cls_branches.6.bias"] == (2e-4, 0.05)
    assert by_name["atss.scales.0.scale"] == (2e-4, 0.05)


def _tiny(*opts):
    return build_cfg(TINY, ["DATASETS.TRAIN", "()", "DATASETS.TEST", "()", *opts])


@pytest.mark.parametrize("opts, match", [
    (("MODEL.CODINO.DN_NUM_QUERIES", "31"), "DN_NUM_QUERIES=31"),
    (("MODEL.CODINO.NUM_QUERIES", "100000"), "NUM_QUERIES=100000"),
    (("MODEL.CODINO.CROP_SIZE", "256"), "CROP_SIZE=256"),
    (("MODEL.CODINO.DN_LABEL_NOISE", "1.5"), "DN_LABEL_NOISE=1.5"),
    (("MODEL.VIT.OUT_INDICES", "[3]"), "OUT_INDICES"),
])
def test_bad_configs_fail_naming_the_key(opts, match):
    # the project's validate_config runs when the config is built, before any model
    with pytest.raises(ValueError, match=match):
        _tiny(*opts)


def test_class_count_mismatch_fails(tmp_path):
    from soma_d2.data import register_dwd

    register_dwd(root=str(tmp_path), prefix="mismatch")
    cfg = build_cfg(TINY, ["DATASETS.TRAIN", "('mismatch_daytime_clear_train',)",
                           "MODEL.CODINO.NUM_CLASSES", "5"])
    with pytest.raises(ValueError, match="NUM_CLASSES=5.*7 thing_classes"):
        build_model(cfg)


def test_image_larger_than_canvas_fails():
    model = build_model(_tiny()).eval()
    with pytest.raises(ValueError, match="INPUT.IMAGE_SIZE=128"):
        model([{"image": torch.zeros(3, 160, 120), "height": 160, "width": 120}])


def test_codino_step_benchmark_smoke():
    from benchmarks.harness.codino import codino_table, run_codino_benchmark

    result = run_codino_benchmark("T", repeats=1)
    rows = {r["method"]: r for r in result["rows"]}
    assert rows["full"]["ratio"] == 1.0 and rows["soma"]["ratio"] > 0
    assert rows["soma"]["trainable_params"] < rows["full"]["trainable_params"]
    assert "SoMA + Co-DINO" in codino_table(result)


def test_backbone_comes_from_model_backbone_name():
    """SoMACoDINO builds its backbone through Detectron2's build_backbone (MODEL.BACKBONE.NAME):
    the default is soma_d2's shared raw-tap backbone, another name is honoured (and a backbone
    with the wrong number of maps is refused, naming the key)."""
    from soma_d2.modeling import RawTapBackbone

    model = build_model(_tiny())
    assert type(model.backbone) is RawTapBackbone and model.in_features == [
        "res2", "res3", "res4", "res5"]
    with pytest.raises(ValueError, match="MODEL.BACKBONE.NAME='build_soma_vit_backbone' gives 5"):
        build_model(_tiny("MODEL.BACKBONE.NAME", "build_soma_vit_backbone"))
