"""tools/convert_official.py on the official Co-DINO layout: every official key lands in our model.

The key list and shapes are the official ``PEFTBackboneCoDETR`` built at tiny size from the
official code (tests/data/official_codino_tiny_keys.json, written by
``benchmarks/official/codino_official.py --dump-keys``). Random tensors in that layout are
converted and loaded strictly into our tiny model; the adapted linear layers are checked against
``x W^T + b + (x A^T) B^T`` computed from the official tensors, the RPN's anchor channels against
mmdet's ratio-first anchor shapes, and unknown / missing keys must be named. The CLI runs end to
end on a release-style file (adapters + heads, ``module.`` EMA copy, separate base file) through
to ``train_net.py --eval-only``.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os

import pytest
import torch
import torch.nn.functional as F
import train_net_helpers as helpers
from detectron2.modeling import build_model
from soma_codino.official_convert import anchor_permutation, convert_official_codino

from soma_d2.checkpoint.official_soma import (
    check_converted_against,
    convert_official_backbone,
    load_official_checkpoint,
)
from soma_d2.config import build_cfg

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location(
    "convert_official_cli", os.path.join(REPO, "tools", "convert_official.py"))
_cli = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_cli)
convert_official_state, convert_main = _cli.convert_official_state, _cli.main
KEYS = os.path.join(REPO, "tests", "data", "official_codino_tiny_keys.json")
TINY = os.path.join(REPO, "configs", "test", "tiny_codino.yaml")
# the official tiny build's sizes that differ from tiny_codino.yaml (see codino_sizes.py)
OPTS = ["MODEL.SOMA.MODE", "released", "MODEL.CODINO.HIDDEN_DIM", "64",
        "MODEL.CODINO.GN_GROUPS", "32", "MODEL.CODINO.FFN_DIM", "128",
        "MODEL.CODINO.ROI_FC_DIM", "128"]


def official_state(seed: int = 0) -> dict[str, torch.Tensor]:
    with open(KEYS) as f:
        shapes = json.load(f)["keys"]
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=gen) for k, s in shapes.items()}


@pytest.fixture(scope="module")
def model():
    cfg = build_cfg(TINY, ["DATASETS.TRAIN", "()", "DATASETS.TEST", "()", *OPTS])
    torch.manual_seed(0)
    return build_model(cfg).eval()


def test_every_official_key_converts_and_loads_strictly(model):
    state = official_state()
    converted = convert_official_state(state, "auto")
    assert len(converted) == len(state)
    check_converted_against(converted, {k: tuple(v.shape) for k, v in model.state_dict().items()})
    result = model.load_state_dict(converted, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    # renamed, not reshaped: every official tensor appears once, bit for bit, except the RPN's
    # per-anchor outputs, whose channels are reordered (same values)
    permuted = ("rpn_head.rpn_cls.", "rpn_head.rpn_reg.")
    by_bytes = {v.numpy().tobytes() for k, v in state.items() if not k.startswith(permuted)}
    ours = {k: v.numpy().tobytes() for k, v in converted.items()}
    assert by_bytes <= set(ours.values())
    for key in (k for k in state if k.startswith(permuted)):
        new = key.replace("rpn_head.rpn_cls.", "rcnn.rpn.rpn_head.objectness_logits.").replace(
            "rpn_head.rpn_reg.", "rcnn.rpn.rpn_head.anchor_deltas.")
        assert not torch.equal(converted[new], state[key])
        assert torch.equal(converted[new].flatten().sort()[0], state[key].flatten().sort()[0])


def test_adapted_layers_compute_the_official_sora_linear(model):
    state = official_state(1)
    model.load_state_dict(convert_official_state(state), strict=True)
    for name in ("attn.q", "attn.k", "attn.v", "attn.proj", "mlp.fc1", "mlp.fc2"):
        src = f"backbone.model.blocks.3.{name}."
        w, b = state[src + "weight"], state[src + "bias"]
        a, bb = state[src + "lora_A.weight"], state[src + "lora_B.weight"]
        xin = torch.randn(5, w.shape[1])
        # rein/peft/sora.py Linear.forward with scaling lora_alpha / r = 4 / 4
        expected = F.linear(xin, w, b) + (xin @ a.T) @ bb.T * 1.0
        layer = model.get_submodule(f"backbone.net.blocks.3.{name}")
        torch.testing.assert_close(layer(xin), expected, rtol=1e-5, atol=1e-5)
    # the q/k/v split is kept: q's factors are not k's
    assert torch.equal(model.backbone.net.blocks[2].attn.k.A,
                       state["backbone.model.blocks.2.attn.k.lora_A.weight"])
    assert torch.equal(model.backbone.net.blocks[2].attn.q.B,
                       state["backbone.model.blocks.2.attn.q.lora_B.weight"])


def _mmdet_anchor_shapes(stride: int, ratios, octave_base: float, scales_per_octave: int):
    """(w, h) of mmdet's AnchorGenerator base anchors, ratio-major (w = base * scale /
    sqrt(ratio), h = base * scale * sqrt(ratio)), computed from its documented formula."""
    scales = [octave_base * 2 ** (k / scales_per_octave) for k in range(scales_per_octave)]
    return [(stride * s / math.sqrt(r), stride * s * math.sqrt(r)) for r in ratios for s in scales]


def test_rpn_anchor_channels_follow_the_anchor_shapes(model):
    state = official_state(2)
    model.load_state_dict(convert_official_state(state), strict=True)
    feat = torch.randn(1, 64, 6, 7)
    hidden = F.relu(F.conv2d(feat, state["rpn_head.rpn_conv.weight"],
                             state["rpn_head.rpn_conv.bias"], padding=1))
    off_cls = F.conv2d(hidden, state["rpn_head.rpn_cls.weight"], state["rpn_head.rpn_cls.bias"])
    off_reg = F.conv2d(hidden, state["rpn_head.rpn_reg.weight"], state["rpn_head.rpn_reg.bias"])
    logits, deltas = model.rcnn.rpn.rpn_head([feat])
    ours_cls, ours_reg = logits[0], deltas[0]
    stride = 4
    official_shapes = _mmdet_anchor_shapes(stride, [0.5, 1.0, 2.0], 4, 3)
    cell = list(model.rcnn.rpn.anchor_generator.cell_anchors)[0]
    ours_shapes = [(float(a[2] - a[0]), float(a[3] - a[1])) for a in cell]
    for j, shape in enumerate(ours_shapes):
        # the official channel of the anchor with our anchor j's shape
        i = min(range(9), key=lambda c: abs(official_shapes[c][0] - shape[0])
                + abs(official_shapes[c][1] - shape[1]))
        assert abs(official_shapes[i][0] - shape[0]) < 1e-3
        torch.testing.assert_close(ours_cls[0, j], off_cls[0, i], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours_reg[0, 4 * j:4 * j + 4], off_reg[0, 4 * i:4 * i + 4],
                                   rtol=1e-5, atol=1e-5)
    assert anchor_permutation().tolist() == [0, 3, 6, 1, 4, 7, 2, 5, 8]


def test_unknown_and_missing_keys_are_named():
    state = official_state()
    state["query_head.transformer.bogus_proj.weight"] = torch.zeros(3)
    with pytest.raises(ValueError, match=r"1 keys.*query_head\.transformer\.bogus_proj\.weight"):
        convert_official_state(state)
    release = {k: v for k, v in official_state().items()
               if not (k.startswith("backbone.model.blocks.") and k.endswith(".weight")
                       and "lora" not in k)}
    with pytest.raises(ValueError, match="--base"):
        convert_official_state(release)
    _, used = convert_official_codino(official_state())
    assert not any(k.startswith("backbone.") for k in used)
    _, used = convert_official_backbone(official_state())
    assert used and all(k.startswith("backbone.model.") for k in used)


def _write_release(tmp_path, state):
    """A release-style pair: adapters + heads (+ biases, mask token) as the official extractor
    keeps them, with an EMAHook copy, and the base DINOv2 file without prefix."""
    frozen = {k for k in state if k.startswith("backbone.model.") and "lora" not in k
              and not k.endswith(("bias", "mask_token"))}
    release = {k: v for k, v in state.items() if k not in frozen}
    raw = {"module." + k: v + 1.0 for k, v in release.items()}
    raw["steps"] = torch.tensor(7)
    torch.save({"state_dict": release, "ema_state_dict": raw, "meta": {"iter": 3}},
               tmp_path / "release.pth")
    torch.save({k[len("backbone.model."):]: v for k, v in state.items() if k in frozen},
               tmp_path / "base.pth")
    return tmp_path / "release.pth", tmp_path / "base.pth"


def test_release_reading_picks_state_dict_or_raw(tmp_path):
    state = official_state(3)
    release, base = _write_release(tmp_path, state)
    merged = load_official_checkpoint(release, base)
    assert set(merged) == set(state)
    assert all(torch.equal(merged[k], state[k]) for k in state)
    raw = load_official_checkpoint(release, base, select="raw")
    key = "query_head.query_embed.weight" if "query_head.query_embed.weight" in state else \
        "query_head.transformer.query_embed.weight"
    torch.testing.assert_close(raw[key], state[key] + 1.0)
    lora = "backbone.model.blocks.2.attn.q.lora_A.weight"
    torch.testing.assert_close(raw[lora], state[lora] + 1.0)
    frozen = "backbone.model.blocks.2.attn.q.weight"
    assert torch.equal(raw[frozen], state[frozen])  # from the base file
    torch.save({"state_dict": {k: v for k, v in state.items()}}, tmp_path / "plain.pth")
    with pytest.raises(ValueError, match="ema_state_dict"):
        load_official_checkpoint(tmp_path / "plain.pth", select="ema")


def test_cli_output_evaluates_with_train_net(tmp_path, synthetic_dwd_root):
    release, base = _write_release(tmp_path, official_state(4))
    out = tmp_path / "converted.pth"
    with pytest.raises(ValueError, match="--base"):
        convert_main(["--checkpoint", str(release), "--output", str(out)])
    assert convert_main(["--checkpoint", str(release), "--base", str(base), "--output",
                         str(out), "--config-file", TINY, *OPTS]) == 0
    proc = helpers.run_train_net(TINY, "--eval-only", "DATASETS.DWD_ROOT", synthetic_dwd_root,
                                 "OUTPUT_DIR", str(tmp_path / "eval"), "MODEL.WEIGHTS", str(out),
                                 *OPTS)
    log = proc.stdout + proc.stderr
    assert "not found in the checkpoint" not in log
    assert "contains keys that are not used by the model" not in log
    assert os.path.isfile(tmp_path / "eval" / "dg_results.json")
