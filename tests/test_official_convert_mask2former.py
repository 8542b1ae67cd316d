"""The official SoMA segmenter's head converter on the official key layout (tiny size).

tests/data/official_mask2former_tiny_keys.json holds the key list and shapes of the official
segmenter (ysj9909/SoMA's PEFTBackboneEncoderDecoder on mmseg / mmdet) built at the harness's
tiny size by `benchmarks/official/mask2former_official.py --keys-json`. Random tensors in that
layout must convert (backbone + head) and load strictly into our tiny `SoMAMask2Former`, with
every official key consumed, each tensor where the official module's role says (pairs written
out from mmdet's layer order, not from the converter's table), and an unknown head key named in
the error. The numerical equivalence with the official code is the harness's
(benchmarks/official/results_mask2former.md).
"""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch
import train_net_helpers as helpers
from soma_mask2former.official_convert import convert_official_mask2former

from benchmarks.official.mask2former_soma_d2 import build_ours
from soma_d2.checkpoint.official_soma import (
    check_consumed,
    convert_official_backbone,
    read_official_checkpoint,
)

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data" / "official_mask2former_tiny_keys.json"
DEMO = str(REPO / "configs" / "demo" / "synthetic_mask2former_semseg.yaml")
# the official tiny build's sizes that differ from the demo config (benchmarks/official/
# mask2former_sizes.py "tiny"); MODE released = the official code's full W plus factors
OPTS = ["MODEL.SOMA.MODE", "released", "MODEL.VIT.NUM_HEADS", "4", "MODEL.VIT.IMG_SIZE", "64",
        "MODEL.MASK2FORMER.HIDDEN_DIM", "64", "MODEL.MASK2FORMER.MASK_DIM", "64",
        "MODEL.MASK2FORMER.NUM_GROUPS", "32", "MODEL.MASK2FORMER.NUM_HEADS", "8",
        "MODEL.MASK2FORMER.NUM_QUERIES", "10", "MODEL.MASK2FORMER.ENC_LAYERS", "2",
        "MODEL.MASK2FORMER.ENC_FFN_DIM", "128", "MODEL.MASK2FORMER.DEC_FFN_DIM", "128"]
_spec = importlib.util.spec_from_file_location(
    "convert_official_cli_m2f", os.path.join(REPO, "tools", "convert_official.py"))
_cli = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_cli)

# (official key, ours) by module role: mmdet's decoder layer runs cross-attention, norms[0],
# self-attention, norms[1], FFN, norms[2]; its encoder layer MSDA, norms[0], FFN, norms[1];
# ConvModule = conv then gn; input convs / level encodings / FPN convs coarsest first on both
PLACEMENT = [
    ("decode_head.pixel_decoder.input_convs.0.conv.weight",
     "sem_seg_head.pixel_decoder.input_convs.0.0.weight"),
    ("decode_head.pixel_decoder.input_convs.2.gn.bias",
     "sem_seg_head.pixel_decoder.input_convs.2.1.bias"),
    ("decode_head.pixel_decoder.encoder.layers.1.self_attn.sampling_offsets.weight",
     "sem_seg_head.pixel_decoder.encoder.1.attn.sampling_offsets.weight"),
    ("decode_head.pixel_decoder.encoder.layers.0.self_attn.value_proj.bias",
     "sem_seg_head.pixel_decoder.encoder.0.attn.value_proj.bias"),
    ("decode_head.pixel_decoder.encoder.layers.1.ffn.layers.0.0.weight",
     "sem_seg_head.pixel_decoder.encoder.1.fc1.weight"),
    ("decode_head.pixel_decoder.encoder.layers.1.ffn.layers.1.bias",
     "sem_seg_head.pixel_decoder.encoder.1.fc2.bias"),
    ("decode_head.pixel_decoder.encoder.layers.0.norms.0.weight",
     "sem_seg_head.pixel_decoder.encoder.0.norm1.weight"),
    ("decode_head.pixel_decoder.encoder.layers.0.norms.1.bias",
     "sem_seg_head.pixel_decoder.encoder.0.norm2.bias"),
    ("decode_head.pixel_decoder.level_encoding.weight",
     "sem_seg_head.pixel_decoder.level_encoding.weight"),
    ("decode_head.pixel_decoder.lateral_convs.0.conv.weight",
     "sem_seg_head.pixel_decoder.lateral_convs.0.0.weight"),
    ("decode_head.pixel_decoder.output_convs.0.gn.weight",
     "sem_seg_head.pixel_decoder.output_convs.0.1.weight"),
    ("decode_head.pixel_decoder.mask_feature.bias", "sem_seg_head.pixel_decoder.mask_feature.bias"),
    ("decode_head.transformer_decoder.layers.2.cross_attn.attn.in_proj_weight",
     "sem_seg_head.transformer_decoder.layers.2.cross_attn.in_proj_weight"),
    ("decode_head.transformer_decoder.layers.0.self_attn.attn.out_proj.bias",
     "sem_seg_head.transformer_decoder.layers.0.self_attn.out_proj.bias"),
    ("decode_head.transformer_decoder.layers.1.norms.0.weight",
     "sem_seg_head.transformer_decoder.layers.1.norm1.weight"),
    ("decode_head.transformer_decoder.layers.1.norms.1.weight",
     "sem_seg_head.transformer_decoder.layers.1.norm2.weight"),
    ("decode_head.transformer_decoder.layers.1.norms.2.bias",
     "sem_seg_head.transformer_decoder.layers.1.norm3.bias"),
    ("decode_head.transformer_decoder.layers.2.ffn.layers.0.0.bias",
     "sem_seg_head.transformer_decoder.layers.2.fc1.bias"),
    ("decode_head.transformer_decoder.layers.2.ffn.layers.1.weight",
     "sem_seg_head.transformer_decoder.layers.2.fc2.weight"),
    ("decode_head.transformer_decoder.post_norm.weight",
     "sem_seg_head.transformer_decoder.post_norm.weight"),
    ("decode_head.query_embed.weight", "sem_seg_head.transformer_decoder.query_embed.weight"),
    ("decode_head.query_feat.weight", "sem_seg_head.transformer_decoder.query_feat.weight"),
    ("decode_head.level_embed.weight", "sem_seg_head.transformer_decoder.level_embed.weight"),
    ("decode_head.cls_embed.bias", "sem_seg_head.transformer_decoder.cls_embed.bias"),
    ("decode_head.mask_embed.4.weight", "sem_seg_head.transformer_decoder.mask_embed.4.weight"),
]


@pytest.fixture(scope="module")
def layout() -> dict:
    return json.loads(DATA.read_text())


@pytest.fixture(scope="module")
def official_state(layout) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {k: torch.randn(shape, generator=gen) for k, shape in layout["keys"].items()}


@pytest.fixture(scope="module")
def converted(official_state):
    head, used_head = convert_official_mask2former(official_state)
    backbone, used_backbone = convert_official_backbone(official_state)
    return head, used_head, backbone, used_backbone


def test_layout_is_the_official_tiny_head(layout):
    keys = layout["keys"]
    c = layout["config"]
    head = [k for k in keys if k.startswith("decode_head.")]
    # pixel decoder: 3 input ConvModules (4), per encoder layer 4 linears + 2 norms (16), level
    # encoding, lateral (3) and output (3) ConvModules, mask feature (2); decoder: per layer 2
    # attentions (4 each), FFN (4), 3 norms (6), post norm, 3 embeddings, class (2), mask MLP (6)
    assert len(head) == 21 + 16 * c["enc_layers"] + 13 + 18 * c["dec_layers"]
    assert keys["decode_head.query_feat.weight"] == [c["num_queries"], c["feat_channels"]]
    assert keys["decode_head.cls_embed.weight"] == [c["num_classes"] + 1, c["feat_channels"]]
    assert not any("decoder_input_projs" in k for k in keys)  # identities in the official config


def test_every_head_key_converted_and_loads_strictly(layout, official_state, converted):
    head, used_head, backbone, used_backbone = converted
    assert used_head == {k for k in official_state if k.startswith("decode_head.")}
    assert len(head) == len(used_head)
    check_consumed(official_state, used_head | used_backbone)  # nothing left over
    model = build_ours(layout["config"])
    ours = model.state_dict()
    assert {k for k in ours if k.startswith("sem_seg_head.")} == set(head)
    model.load_state_dict({**backbone, **head}, strict=True)
    loaded = model.state_dict()
    for key, value in head.items():
        assert torch.equal(loaded[key], value), key


@pytest.mark.parametrize("official,ours", PLACEMENT)
def test_placement_by_module_role(official_state, converted, official, ours):
    head = converted[0]
    assert torch.equal(head[ours], official_state[official])


def test_every_value_lands_once(official_state, converted):
    """No two official tensors go to one name and no tensor is duplicated (distinct values)."""
    head = converted[0]
    sources = {id(official_state[k]) for k in converted[1]}
    assert len({id(v) for v in head.values()}) == len(head) == len(sources)


def test_unknown_head_key_is_named(official_state):
    bad = dict(official_state)
    bad["decode_head.decoder_input_projs.0.weight"] = torch.zeros(64, 64, 1, 1)
    bad["decode_head.transformer_decoder.layers.0.norms.3.weight"] = torch.zeros(64)
    with pytest.raises(KeyError) as err:
        convert_official_mask2former(bad)
    assert "decode_head.decoder_input_projs.0.weight" in str(err.value)
    assert "decode_head.transformer_decoder.layers.0.norms.3.weight" in str(err.value)


def test_other_keys_are_left_to_the_caller(official_state):
    extra = {**official_state, "auxiliary_head.conv_seg.weight": torch.zeros(3)}
    _, used = convert_official_mask2former(extra)
    assert "auxiliary_head.conv_seg.weight" not in used
    _, used_backbone = convert_official_backbone(extra)
    with pytest.raises(ValueError, match="auxiliary_head.conv_seg.weight"):
        check_consumed(extra, used | used_backbone)


@pytest.mark.parametrize("select", ["state_dict", "raw"])
def test_after_the_common_reader(tmp_path, official_state, select):
    """An mmengine file (EMA run: `state_dict` + `ema_state_dict` with `module.` and `steps`)
    read by the common reader converts to the same head."""
    raw = {k: v + 1 for k, v in official_state.items()}
    path = tmp_path / "release.pth"
    torch.save({"meta": {}, "state_dict": official_state,
                "ema_state_dict": {"steps": torch.tensor(5),
                                   **{"module." + k: v for k, v in raw.items()}}}, path)
    state = read_official_checkpoint(path, select)
    head, _ = convert_official_mask2former(state)
    want = official_state if select == "state_dict" else raw
    key = "decode_head.transformer_decoder.layers.1.norms.2.bias"
    assert torch.equal(head["sem_seg_head.transformer_decoder.layers.1.norm3.bias"], want[key])


def test_cli_release_file_evaluates_with_train_net(tmp_path, official_state,
                                                   synthetic_semseg_root):
    """A release-style pair (adapters + head, EMA copy with `module.`; frozen DINOv2 weights in
    the separate base file) -> tools/convert_official.py (checked against the config's model)
    -> train_net.py --eval-only with every weight used."""
    frozen = {k for k in official_state if k.startswith("backbone.model.") and "lora" not in k
              and not k.endswith(("bias", "mask_token"))}
    release = {k: v for k, v in official_state.items() if k not in frozen}
    ema = {"steps": torch.tensor(3), **{"module." + k: v for k, v in release.items()}}
    torch.save({"state_dict": release, "ema_state_dict": ema, "meta": {}},
               tmp_path / "release.pth")
    torch.save({k[len("backbone.model."):]: official_state[k] for k in frozen},
               tmp_path / "base.pth")
    out = tmp_path / "converted.pth"
    assert _cli.main(["--checkpoint", str(tmp_path / "release.pth"), "--base",
                      str(tmp_path / "base.pth"), "--output", str(out), "--config-file", DEMO,
                      *OPTS]) == 0
    proc = helpers.run_train_net(
        DEMO, "--eval-only", "DATASETS.SYNTHETIC_SEG_ROOT", synthetic_semseg_root,
        "OUTPUT_DIR", str(tmp_path / "eval"), "MODEL.WEIGHTS", str(out), *OPTS)
    log = proc.stdout + proc.stderr
    assert "not found in the checkpoint" not in log
    assert "contains keys that are not used by the model" not in log
    table = helpers.dg_table(str(tmp_path / "eval"))
    assert table["metric"] == "sem_seg/mIoU" and len(table["rows"][0]["values"]) == 5
