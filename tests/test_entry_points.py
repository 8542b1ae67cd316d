"""Every user-facing entry point runs: tools/demo.py (capped), the Cascade R-CNN config and both
demo configs build and take training steps (made tiny by overrides), and the segmentation TTA
is checked against a brute-force reference on a model that is neither flip- nor scale-invariant,
so that skipping the flipped pass or a scale fails."""
from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import math
import os
import types

import pytest
import torch
import train_net_helpers as helpers
from stub_models import PoolBackbone
from torch import nn
from torch.nn import functional as F

from soma_d2.data.synthetic import generate_synthetic_dwd, generate_synthetic_semseg
from soma_d2.engine.setup import setup_cfg, train
from soma_d2.modeling.segmentation import SoMASemanticSegmentor

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs")
# shrink any DINOv2-L config to a 4-block, 64-wide ViT at 128 px
TINY_VIT = ["MODEL.VIT.ARCH", "vit_s", "MODEL.VIT.EMBED_DIM", "64", "MODEL.VIT.DEPTH", "4",
            "MODEL.VIT.NUM_HEADS", "2", "MODEL.VIT.IMG_SIZE", "128", "MODEL.VIT.OUT_INDICES",
            "[3]", "MODEL.SOMA.RANK", "4", "MODEL.SOMA.ALPHA", "4.0", "MODEL.SOMA.START_BLOCK",
            "2", "MODEL.PYRAMID.OUT_CHANNELS", "32", "MODEL.DEVICE", "cpu",
            "SOLVER.AMP.ENABLED", "False", "DATALOADER.NUM_WORKERS", "0", "SEED", "0"]
STEPS = ["SOLVER.MAX_ITER", "3", "SOLVER.STEPS", "()", "SOLVER.WARMUP_ITERS", "1",
         "SOLVER.IMS_PER_BATCH", "2", "SOLVER.LOG_PERIOD", "1", "SOLVER.CHECKPOINT_PERIOD", "100",
         "TEST.EVAL_PERIOD", "0"]


@pytest.fixture(scope="module")
def dwd_root(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("synthetic_dwd"))
    generate_synthetic_dwd(root, images_per_domain=4, image_size=128, seed=0, progress=False)
    return root


def _train(config: str, out: str, opts: list[str]) -> dict[int, dict]:
    args = types.SimpleNamespace(config_file=os.path.join(CONFIGS, config), eval_only=False,
                                 register_module=[], num_gpus=1, resume=False,
                                 opts=[*opts, "OUTPUT_DIR", out])
    train(setup_cfg(args))
    return helpers.metric_rows(out)


def test_cascade_config_builds_and_trains(dwd_root, tmp_path):
    rows = _train("dwd_soma_cascade.yaml", str(tmp_path / "cascade"), [
        *TINY_VIT, *STEPS, "DATASETS.DWD_ROOT", dwd_root, "DATASETS.DWD_PREFIX", "ep",
        "DATASETS.TRAIN", "('ep_daytime_clear_train',)", "DATASETS.TEST", "()",
        "INPUT.IMAGE_SIZE", "128", "MODEL.ROI_BOX_HEAD.NUM_CONV", "0",
        "MODEL.ROI_BOX_HEAD.FC_DIM", "64", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "64",
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32"])
    assert sorted(rows) == [0, 1, 2]
    for row in rows.values():
        assert math.isfinite(row["total_loss"])
        # three cascade stages, each with its own losses
        assert all(f"loss_cls_stage{s}" in row for s in range(3)), sorted(row)
    assert os.path.isfile(str(tmp_path / "cascade" / "model_final.pth"))


def test_semseg_demo_config_builds_trains_and_evaluates(tmp_path):
    root = str(tmp_path / "synseg")
    generate_synthetic_semseg(root, images_per_domain=3, image_size=128, seed=0, progress=False)
    out = str(tmp_path / "semseg_demo")
    rows = _train("demo/synthetic_soma_semseg.yaml", out, [
        *STEPS, "DATALOADER.NUM_WORKERS", "0", "DATASETS.SYNTHETIC_SEG_ROOT", root,
        "MODEL.VIT.EMBED_DIM", "64", "MODEL.VIT.NUM_HEADS", "2", "MODEL.EMA.START_ITER", "1",
        "INPUT.CROP.SIZE", "(128, 128)", "INPUT.SEM_SEG_RESIZE", "(512, 128)",
        "MODEL.VIT.IMG_SIZE", "128", "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "256",
        "MODEL.SEM_SEG_INFERENCE.CROP_SIZE", "(128, 128)",
        "MODEL.SEM_SEG_INFERENCE.STRIDE", "(96, 96)",
        "DATASETS.TEST", "('synseg_night_sunny',)"])
    assert sorted(rows) == [0, 1, 2] and all(math.isfinite(r["total_loss"]) for r in rows.values())
    table = json.load(open(os.path.join(out, "dg_results.json")))
    assert "night_sunny" in json.dumps(table)


def test_demo_tool_runs_capped_and_writes_every_output(tmp_path):
    spec = importlib.util.spec_from_file_location("demo_tool",
                                                  os.path.join(REPO, "tools", "demo.py"))
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    out, data = str(tmp_path / "demo"), str(tmp_path / "data")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        demo.main(["--output-dir", out, "--data-dir", data, "--images-per-domain", "3",
                   "--max-iter", "2", "--num-vis", "1", "DATALOADER.NUM_WORKERS", "0",
                   "SOLVER.STEPS", "()", "SOLVER.WARMUP_ITERS", "1", "SOLVER.IMS_PER_BATCH", "2"])
    text = printed.getvalue()
    assert "domain-generalization table" in text and "daytime_clear" in text
    assert os.path.isfile(os.path.join(data, ".complete"))
    for name in ("metrics.json", "log.txt", "model_final.pth", "model_final_adapter.pth",
                 "dg_results.json", "dg_results.md", "config.yaml"):
        assert os.path.isfile(os.path.join(out, name)), name
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(out))
    assert sorted(os.listdir(os.path.join(out, "inference")))  # one folder per test data set
    pngs = [line.strip() for line in text.splitlines() if line.strip().endswith(".png")]
    assert len(pngs) == 5 and all(os.path.isfile(p) for p in pngs)


# ---- TTA: brute-force reference on a model that is neither flip- nor scale-invariant -----------


class _RampHead(nn.Module):
    """Per-pixel logits plus a left-to-right ramp: mirroring the input does not mirror the output,
    and the ramp's slope in pixels changes with the image scale."""

    def __init__(self):
        super().__init__()
        self.predictor = nn.Conv2d(6, 5, 1)
        self.ignore_value = 255

    def forward(self, features, targets=None):
        x = self.predictor(features["p2"])
        ramp = torch.arange(x.shape[-1], dtype=x.dtype) / 8.0
        x = x + ramp * torch.linspace(-1.0, 1.0, x.shape[1])[:, None, None]
        return F.interpolate(x, scale_factor=4, mode="bilinear", align_corners=False), {}


def _segmentor(**kwargs) -> SoMASemanticSegmentor:
    torch.manual_seed(0)
    return SoMASemanticSegmentor(backbone=PoolBackbone(), sem_seg_head=_RampHead(),
                                 pixel_mean=[0.0] * 3, pixel_std=[1.0] * 3, **kwargs).eval()


def _reference(image: torch.Tensor, scales, flips) -> torch.Tensor:
    """Mean over scales x flips of softmax(plain prediction), each mapped back to the image."""
    plain = _segmentor()
    h, w = image.shape[-2:]
    total = []
    for s in scales:
        size = (round(h * s), round(w * s))
        scaled = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
        for flip in flips:
            x = scaled.flip(-1) if flip else scaled
            logits = plain([{"image": x}])[0]["sem_seg"][None]
            logits = logits.flip(-1) if flip else logits
            logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
            total.append(logits.softmax(1)[0])
    return torch.stack(total).mean(0)


def test_tta_uses_every_scale_and_the_flipped_pass():
    image = torch.rand(3, 40, 56, generator=torch.Generator().manual_seed(3))  # unsaturated softmax
    scales = (0.6, 1.0, 1.4)
    with torch.no_grad():
        got = _segmentor(flip=True, scales=scales)([{"image": image}])[0]["sem_seg"]
        expected = _reference(image, scales, (False, True))
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
        # each omission is visible: the test fails if a pass is skipped
        for wrong in (_reference(image, scales, (False,)),
                      _reference(image, scales[1:], (False, True)),
                      _reference(image, scales[:-1], (False, True))):
            assert (got - wrong).abs().max() > 1e-3
        flip_only = _segmentor(flip=True)([{"image": image}])[0]["sem_seg"]
        torch.testing.assert_close(flip_only, _reference(image, (1.0,), (False, True)))
        assert (flip_only - _reference(image, (1.0,), (False,))).abs().max() > 1e-3
