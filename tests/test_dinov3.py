"""DINOv3 ViTs: every public layout loads to the same function as its own implementation, and
the family runs behind the same SoMA backbones, configs, decomposition cache, exports and demo.

References nobody here wrote: timm's ``vit_*_patch16_dinov3`` (Eva with ``RotaryEmbeddingDinoV3``)
and HF transformers' ``DINOv3ViTModel``, tiny and with random weights (random layer-scales,
norms, tokens and biases too), and PEFT for the exported adapter. The official layout is written
from the timm model by inverting timm's own official -> timm ``checkpoint_filter_fn``, and that
filter must give the timm state dict back from it, so the official file is checked against timm's
reading of the official layout.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from detectron2.modeling import build_model
from peft import PeftModel
from safetensors.torch import save_file
from timm.models.eva import checkpoint_filter_fn
from transformers import DINOv3ViTConfig, DINOv3ViTModel
from vit_helpers import randomize_vit

from soma_d2.checkpoint import read_weight_file
from soma_d2.checkpoint.dinov3 import (
    convert_dinov3_state_dict,
    detect_dinov3_layout,
    detect_vit_family,
    expected_dinov3_keys,
    load_dinov3_weights,
)
from soma_d2.checkpoint.peft_export import (
    capture_initial_state,
    peft_lora_export,
    timm_state_dict,
    write_peft_adapter,
)
from soma_d2.config import build_cfg
from soma_d2.layers.vit_tensors import dinov3_swiglu_hidden, rope_periods
from soma_d2.modeling.backbone import build_soma_vit
from soma_d2.modeling.dinov3 import DINOV3_ARCHS, DinoV3VisionTransformer
from soma_d2.modeling.dinov3_backbone import DinoV3BackboneNet, _dinov3_kwargs
from soma_d2.modeling.dinov3_layers import RopePositionEmbedding
from soma_d2.soma import DecompositionCache, SoMAConfig, inject_soma

TOL = 1e-5
DIM, HEADS, DEPTH = 64, 2, 2  # head dim 32: the RoPE has 8 frequencies per axis
_KEYS = ("gamma", "lambda1", "norm", "token", "bias")


def _timm(name: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, embed_dim=DIM, depth=DEPTH,
                              num_heads=HEADS, num_classes=0)
    return randomize_vit(model, seed, keys=_KEYS, scale=0.3)


def _hf(gated: bool, seed: int = 0, key_bias: bool = False) -> DINOv3ViTModel:
    torch.manual_seed(seed)
    config = DINOv3ViTConfig(hidden_size=DIM, num_hidden_layers=DEPTH, num_attention_heads=HEADS,
                             intermediate_size=96 if gated else 4 * DIM, num_register_tokens=4,
                             use_gated_mlp=gated, hidden_act="silu" if gated else "gelu",
                             key_bias=key_bias, layerscale_value=1e-5)
    return randomize_vit(DINOv3ViTModel(config), seed, keys=_KEYS, scale=0.3)


def _official_from_timm(state: dict[str, torch.Tensor], periods: torch.Tensor,
                        k_bias_noise: bool = True) -> dict[str, torch.Tensor]:
    """timm DINOv3 keys -> official ones (storage_tokens, ls*.gamma, qkv.bias + bias_mask, w1..w3,
    rope_embed.periods in bfloat16). The k part of the fused bias gets noise that the mask
    (zero there, as the official ``LinearKMaskedBias``) must cancel."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.endswith("attn.q_bias") or key.endswith("attn.v_bias"):
            continue
        key = key.replace("reg_token", "storage_tokens").replace("gamma_1", "ls1.gamma")
        key = key.replace("gamma_2", "ls2.gamma").replace("mlp.fc1_g", "mlp.w1")
        key = key.replace("mlp.fc1_x", "mlp.w2")
        if "mlp.fc1_g" in " ".join(state) and key.endswith(("mlp.fc2.weight", "mlp.fc2.bias")):
            key = key.replace("mlp.fc2", "mlp.w3")
        out[key] = value.clone()
    for key in [k for k in state if k.endswith("attn.q_bias")]:
        stem = key[: -len("q_bias")]
        q, v = state[key], state[stem + "v_bias"]
        k = torch.randn_like(q) if k_bias_noise else torch.zeros_like(q)
        out[stem + "qkv.bias"] = torch.cat([q, k, v])
        out[stem + "qkv.bias_mask"] = torch.cat([torch.ones_like(q), torch.zeros_like(q),
                                                 torch.ones_like(v)])
    out["mask_token"] = torch.zeros(1, DIM)
    out["rope_embed.periods"] = periods.to(torch.bfloat16)  # as the released files
    return out


def _ours_from(path, **kwargs) -> DinoV3VisionTransformer:
    """Our ViT from a file, configured as the conversion says, cross-checked against the plain
    ``load_dinov3_weights`` result."""
    raw, _ = read_weight_file(path)
    conversion = convert_dinov3_state_dict(raw, source=str(path))
    state = load_dinov3_weights(path)
    assert state.keys() == conversion.state_dict.keys()
    assert all(torch.equal(state[k], conversion.state_dict[k]) for k in state)
    model = DinoV3VisionTransformer(**{**conversion.config, "num_heads": HEADS, **kwargs})
    model.load_state_dict(state)
    return model.eval()


def _image(h: int = 64, w: int = 96, seed: int = 1) -> torch.Tensor:
    return torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", ["vit_small_patch16_dinov3_qkvb", "vit_small_plus_patch16_dinov3"])
def test_timm_layout_matches_timm_forward(tmp_path, name):
    """timm's tokens (cls, 4 registers, patches, final norm) at two sizes, one not square."""
    ref = _timm(name)
    path = tmp_path / "timm.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    ours = _ours_from(path)
    assert ours.num_prefix_tokens == 5 and len(ours.blocks) == DEPTH
    for h, w in ((64, 96), (128, 128)):
        x = _image(h, w)
        with torch.no_grad():
            diff = (ours.forward_features(x) - ref.forward_features(x)).abs().max().item()
        assert diff < TOL, (name, h, w, diff)


@pytest.mark.parametrize("name", ["vit_small_patch16_dinov3_qkvb", "vit_small_plus_patch16_dinov3"])
def test_official_layout_matches_timm_reading_and_forward(tmp_path, name):
    ref = _timm(name, seed=3)
    official = _official_from_timm(ref.state_dict(), ref.rope.periods)
    back = checkpoint_filter_fn(official, ref)  # timm's own reading of the official layout
    assert back.keys() == ref.state_dict().keys()
    assert all(torch.equal(back[k], v) for k, v in ref.state_dict().items())
    assert detect_dinov3_layout(official) == "official"
    path = tmp_path / "official.pth"
    torch.save({"teacher": {f"backbone.{k}": v for k, v in official.items()}}, path)
    conversion = convert_dinov3_state_dict(
        {f"backbone.{k}": v for k, v in official.items()})
    assert conversion.config["num_heads"] == HEADS  # from the stored RoPE periods
    assert "rope_min_period" not in conversion.config  # bf16 periods read as base 100
    assert "blocks.0.attn.k.bias" not in conversion.state_dict  # masked k bias dropped
    ours = _ours_from(path)
    x = _image()
    with torch.no_grad():
        diff = (ours.forward_features(x) - ref.forward_features(x)).abs().max().item()
    assert diff < TOL, diff


@pytest.mark.parametrize("gated", [False, True])
def test_hf_layout_matches_transformers_forward(tmp_path, gated):
    ref = _hf(gated)
    path = tmp_path / "model.safetensors"
    state = {k: v.contiguous() for k, v in ref.state_dict().items()}
    save_file(state, str(path))
    assert detect_dinov3_layout(state) == "hf"
    ours = _ours_from(path)
    assert ours.blocks[0].attn.k.bias is None
    for h, w in ((64, 96), (96, 64)):
        x = _image(h, w)
        with torch.no_grad():
            diff = (ours.forward_features(x) - ref(x).last_hidden_state).abs().max().item()
        assert diff < TOL, (gated, h, w, diff)
    # hub files written by transformers 4.x name the encoder "layer.N" (no "model.")
    old = {k.removeprefix("model."): v for k, v in state.items()}
    converted = convert_dinov3_state_dict(old).state_dict
    assert all(torch.equal(converted[k], v) for k, v in ours.state_dict().items())


def test_hf_key_bias_is_kept(tmp_path):
    ref = _hf(False, key_bias=True)
    path = tmp_path / "kb.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    ours = _ours_from(path)
    assert ours.blocks[0].attn.k.bias is not None
    x = _image()
    with torch.no_grad():
        diff = (ours.forward_features(x) - ref(x).last_hidden_state).abs().max().item()
    assert diff < TOL


def test_rope_matches_references_at_detection_and_segmentation_grids():
    """The RoPE tables of timm and HF at 512 and 1024 px (grids 32 and 64) and a non-square one,
    built from the grid itself: no table is resampled."""
    ref = _hf(False)
    hf_rope = ref.rope_embeddings
    timm_rope = _timm("vit_small_patch16_dinov3_qkvb").rope
    ours = RopePositionEmbedding(DIM // HEADS).eval()
    assert torch.allclose(rope_periods(DIM // HEADS), timm_rope.periods.float())
    for side in ((32, 32), (64, 64), (40, 64)):
        sin, cos = ours(side)
        hf_cos, hf_sin = hf_rope(torch.zeros(1, 3, side[0] * 16, side[1] * 16))
        assert (sin - hf_sin).abs().max() < 1e-6 and (cos - hf_cos).abs().max() < 1e-6
        timm_sin, timm_cos = timm_rope.get_embed(list(side)).chunk(2, dim=-1)
        assert (sin - timm_sin).abs().max() < 1e-5 and (cos - timm_cos).abs().max() < 1e-5


def test_rope_augmentations_only_in_training():
    rope = RopePositionEmbedding(32, shift=1.0, jitter=2.0, rescale=2.0)
    plain = RopePositionEmbedding(32)
    rope.eval()
    assert torch.equal(rope((4, 6))[0], plain((4, 6))[0])
    rope.train()
    torch.manual_seed(0)
    assert not torch.allclose(rope((4, 6))[0], plain((4, 6))[0])


def test_official_sizes_and_swiglu_widths():
    assert dinov3_swiglu_hidden(384, 6.0) == 1536 and dinov3_swiglu_hidden(1280, 6.0) == 5120
    widths = {}
    for arch, kwargs in DINOV3_ARCHS.items():
        with torch.device("meta"):
            model = DinoV3VisionTransformer(**kwargs)
        widths[arch] = sum(p.numel() for p in model.parameters())
        assert model.embed_dim // model.num_heads == 64
    with torch.device("meta"):
        ref = timm.create_model("vit_huge_plus_patch16_dinov3", pretrained=False, num_classes=0)
        ref_l = timm.create_model("vit_large_patch16_dinov3_qkvb", pretrained=False,
                                  num_classes=0)
    # same parameter counts as timm's ports (ours keeps a mask token; H+ has no q/v bias in timm)
    dim_h, dim_l = 1280, 1024
    assert widths["vit_h_plus"] - dim_h - 32 * 2 * dim_h == sum(
        p.numel() for p in ref.parameters())
    assert widths["vit_l"] - dim_l == sum(p.numel() for p in ref_l.parameters())


@pytest.mark.parametrize("config", [
    dict(embed_dim=DIM, depth=DEPTH, num_heads=HEADS),
    dict(embed_dim=48, depth=3, num_heads=4, num_register_tokens=0, ffn_layer="swiglu",
         mlp_ratio=6.0, key_bias=True),
    dict(embed_dim=32, depth=1, num_heads=2, layer_scale_init=None, qkv_bias=False,
         ffn_hidden_dim=40, patch_size=8, in_chans=1),
    dict(embed_dim=64, depth=4, num_heads=4, ffn_layer="swiglu", ffn_hidden_dim=72,
         layer_scale_init=0.1, num_register_tokens=2),
    dict(embed_dim=96, depth=2, num_heads=3, mlp_ratio=2.5, rope_base=None, rope_min_period=0.5,
         rope_max_period=50.0, key_bias=True, qkv_bias=False),
])
def test_key_schema_is_the_models_state_dict(config):
    """The loader's written-out schema: names, shapes and order of the model's own state dict
    (the RoPE periods buffer is not persistent, so no head count or schedule enters it)."""
    model = DinoV3VisionTransformer(**config)
    actual = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    assert list(expected_dinov3_keys(config).items()) == actual
    assert not any(k.startswith("rope_embed") for k, _ in actual)
    with pytest.raises(ValueError, match="ffn_layer"):
        expected_dinov3_keys({**config, "ffn_layer": "geglu"})


def test_unknown_keys_and_dinov2_files_are_named():
    state = _hf(False).state_dict()
    bad = {**state, "model.layer.0.attention.extra.weight": torch.zeros(2)}
    with pytest.raises(ValueError, match="attention.extra.weight"):
        convert_dinov3_state_dict(bad, source="bad.pth")
    with pytest.raises(ValueError, match="missing keys.*blocks.1.norm2"):
        convert_dinov3_state_dict({k: v for k, v in state.items()
                                   if not k.startswith("model.layer.1.norm2")})
    v2 = {"cls_token": torch.zeros(1, 1, 8), "pos_embed": torch.zeros(1, 5, 8)}
    assert detect_vit_family(v2) == "dinov2" and detect_vit_family(state) == "dinov3"
    with pytest.raises(ValueError, match="DINOv2 checkpoint"):
        convert_dinov3_state_dict(v2)


@pytest.mark.parametrize("swiglu", [False, True])
def test_soma_step0_equality_and_targets(swiglu):
    """SoMA on q/k/v/proj and the FFN (fc1/fc2, or w1/w2/w3) leaves the function unchanged."""
    torch.manual_seed(0)
    vit = randomize_vit(DinoV3VisionTransformer(
        embed_dim=DIM, depth=DEPTH, num_heads=HEADS, ffn_layer="swiglu" if swiglu else "mlp",
        mlp_ratio=6.0 if swiglu else 4.0, out_indices=(0, 1)), keys=_KEYS, scale=0.3)
    x = _image()
    with torch.no_grad():
        before = vit(x)
    ffn = ["w1", "w2", "w3"] if swiglu else ["fc1", "fc2"]
    report = inject_soma(vit, SoMAConfig(rank=4, target_modules=["q", "k", "v", "proj", *ffn]))
    assert len(report.layers) == DEPTH * (4 + len(ffn))
    with torch.no_grad():
        after = vit(x)
    for key in before:
        assert (before[key] - after[key]).abs().max() < 1e-4
    trainable = [n for n, p in vit.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith("blocks.") for n in trainable)


# ---- the family behind the Detectron2 backbones, configs, cache and export ----------------------

REPO = Path(__file__).resolve().parents[1]
TINY_OPTS = ["MODEL.VIT.EMBED_DIM", str(DIM), "MODEL.VIT.NUM_HEADS", str(HEADS)]


@pytest.fixture(scope="module")
def official_file(tmp_path_factory) -> Path:
    """A 4-block official-layout DINOv3 file (from a random timm model, as above)."""
    torch.manual_seed(5)
    ref = randomize_vit(timm.create_model("vit_small_patch16_dinov3_qkvb", pretrained=False,
                                          embed_dim=DIM, depth=4, num_heads=HEADS,
                                          num_classes=0), 5, keys=_KEYS, scale=0.3)
    path = tmp_path_factory.mktemp("dinov3") / "dinov3_tiny_pretrain.pth"
    torch.save(_official_from_timm(ref.state_dict(), ref.rope.periods), path)
    return path


def _plain(path: Path, **kwargs) -> DinoV3VisionTransformer:
    conversion = convert_dinov3_state_dict(read_weight_file(path)[0])
    model = DinoV3VisionTransformer(**{**conversion.config, "num_heads": HEADS, **kwargs})
    model.load_state_dict(conversion.state_dict)
    return model.eval()


@pytest.mark.parametrize("config", ["test/tiny_codino.yaml", "demo/synthetic_mask2former_semseg.yaml",
                                    "test/tiny_soma_det.yaml"])
def test_detectron2_backbones_run_dinov3_at_step0_equality(official_file, config):
    """FAMILY auto picks DINOv3 from the file; the Co-DINO / Mask2Former raw taps and the ViTDet
    pyramid's input equal the plain loaded ViT's (SoMA at step 0 changes nothing)."""
    cfg = build_cfg(str(REPO / "configs" / config),
                    [*TINY_OPTS, "MODEL.VIT.DEPTH", "4", "MODEL.SOMA.PRETRAINED", str(official_file)])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    net = model.backbone.net
    assert isinstance(net, DinoV3BackboneNet) and net.soma_report.layers
    plain = _plain(official_file, out_indices=net.out_indices)
    x = _image(128, 128)
    with torch.no_grad():
        _, ours, _ = net._encode(x, None, net.out_indices[-1], net.out_indices)
        _, ref, _ = plain._encode(x, None, plain.out_indices[-1], plain.out_indices)
        for i in net.out_indices:
            assert (ours[i] - ref[i]).abs().max() < 1e-4
        image = (torch.rand(3, 128, 128) * 255).round()
        out = model([{"image": image, "height": 128, "width": 128}])
    assert ("instances" in out[0]) or out[0]["sem_seg"].shape[-2:] == (128, 128)


def test_family_and_size_errors_name_the_key(official_file):
    with pytest.raises(ValueError, match="MODEL.VIT.FAMILY='dinov2' but MODEL.SOMA.PRETRAINED"):
        build_soma_vit(build_cfg(str(REPO / "configs/test/tiny_soma_det.yaml"),
                                 [*TINY_OPTS, "MODEL.VIT.FAMILY", "dinov2",
                                  "MODEL.SOMA.PRETRAINED", str(official_file)]))
    with pytest.raises(ValueError, match="MODEL.VIT.ARCH='vit_g' is not a dinov3 size"):
        build_cfg("", ["MODEL.VIT.FAMILY", "dinov3", "MODEL.VIT.ARCH", "vit_g"])
    with pytest.raises(ValueError, match=r"MODEL.SOMA.TARGETS entries \['fc1', 'fc2'\].*w1, w2"):
        build_soma_vit(build_cfg(str(REPO / "configs/test/tiny_soma_det.yaml"),
                                 [*TINY_OPTS, "MODEL.VIT.FAMILY", "dinov3", "MODEL.VIT.ARCH",
                                  "vit_s_plus"]))


def test_shipped_configs_are_vit_l16_dinov3():
    det = build_cfg(str(REPO / "configs" / "dwd_soma_dinov3.yaml"))
    seg = build_cfg(str(REPO / "configs" / "gta2cbm_soma_dinov3_semseg.yaml"))
    assert det.MODEL.META_ARCHITECTURE == "SoMACoDINO" and det.INPUT.IMAGE_SIZE == 1024
    assert seg.MODEL.META_ARCHITECTURE == "SoMAMask2Former" and tuple(seg.INPUT.CROP.SIZE) == (
        512, 512)
    for cfg in (det, seg):
        assert (cfg.MODEL.VIT.FAMILY, cfg.MODEL.VIT.ARCH, cfg.MODEL.VIT.PATCH_SIZE) == (
            "dinov3", "vit_l", 16)
        assert list(cfg.MODEL.VIT.OUT_INDICES) == [7, 11, 15, 23]
        assert (cfg.MODEL.SOMA.RANK, cfg.MODEL.SOMA.START_BLOCK) == (16, 8)
        kwargs = _dinov3_kwargs(cfg, None)
        with torch.device("meta"):
            vit = DinoV3VisionTransformer(**kwargs)
        assert (vit.embed_dim, vit.depth, vit.num_heads, vit.num_register_tokens) == (
            1024, 24, 16, 4)


def test_decomposition_cache_hits_on_a_dinov3_build(official_file, monkeypatch):
    opts = [*TINY_OPTS, "MODEL.VIT.DEPTH", "4", "MODEL.SOMA.PRETRAINED", str(official_file)]
    cfg = build_cfg(str(REPO / "configs/test/tiny_soma_det.yaml"), opts)
    calls = []
    original = DecompositionCache.decompose

    def spy(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        calls.append((self.hits, self.misses))
        return result

    monkeypatch.setattr(DecompositionCache, "decompose", spy)
    first = build_soma_vit(cfg)
    second = build_soma_vit(cfg)
    assert calls == [(0, 1), (1, 0)]  # a fresh cache object per build: miss, then hit
    a, b = first.state_dict(), second.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def _tuned(path: Path, swiglu: bool) -> tuple[DinoV3VisionTransformer, dict]:
    vit = _plain(path)
    ffn = ["w1", "w2", "w3"] if swiglu else ["fc1", "fc2"]
    inject_soma(vit, SoMAConfig(rank=3, start_block=1, target_modules=["q", "k", "v", "proj",
                                                                       *ffn]))
    initial = capture_initial_state(vit)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _, p in vit.named_parameters():
            if p.requires_grad:
                p.add_(0.2 * p.abs().mean() * torch.randn(p.shape, generator=gen) + 0.01)
    return vit.eval(), initial


@pytest.mark.parametrize("gated", [False, True])
def test_peft_adapter_on_transformers_dinov3(tmp_path, gated):
    hf = _hf(gated, seed=2)
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in hf.state_dict().items()}, str(path))
    vit, initial = _tuned(path, gated)
    export = peft_lora_export(vit, initial, source_patch_size=16)
    assert export.config["auto_mapping"]["base_model_class"] == "DINOv3ViTModel"
    write_peft_adapter(export, tmp_path / "adapter")
    x = _image()
    with torch.no_grad():
        tuned = vit.forward_features(x)
        before = hf(pixel_values=x).last_hidden_state
        adapted = PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()(
            pixel_values=x).last_hidden_state
    assert (tuned - before).abs().max() > 1e-2  # the tuning changed the function
    assert (adapted - tuned).abs().max() < 1e-4


@pytest.mark.parametrize("name", ["vit_small_patch16_dinov3_qkvb", "vit_small_plus_patch16_dinov3"])
def test_timm_merged_export_matches_timm(tmp_path, name):
    ref = _timm(name, seed=4)
    path = tmp_path / "timm.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    vit, _ = _tuned(path, "plus" in name)
    state, kwargs = timm_state_dict(vit)
    model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs).eval()
    model.load_state_dict(state)
    x = _image()
    with torch.no_grad():
        assert (model.forward_features(x) - vit.forward_features(x)).abs().max() < 1e-4


def test_demo_compare_tabulates_both_foundation_models(tmp_path, official_file, capsys):
    """`tools/demo.py --compare --also-config`: the same methods on a DINOv3 foundation model,
    one table with both (here the tiny detector on a random DINOv2 init and the DINOv3 file)."""
    import json
    import sys

    from soma_d2.data.synthetic import generate_synthetic_dwd

    data = tmp_path / "data"
    generate_synthetic_dwd(str(data), images_per_domain=4, image_size=128, seed=0, progress=False)
    (data / ".complete").write_text("4\n")
    dinov3 = tmp_path / "tiny_dinov3.yaml"
    dinov3.write_text(f'_BASE_: "{REPO / "configs/test/tiny_soma_det.yaml"}"\nMODEL:\n  VIT:\n'
                      f'    FAMILY: "dinov3"\n  SOMA:\n    PRETRAINED: "{official_file}"\n')
    sys.path.insert(0, str(REPO / "tools"))
    import demo

    out = tmp_path / "compare"
    demo.main(["--compare", "--methods", "soma", "--config-file",
               str(REPO / "configs/test/tiny_soma_det.yaml"), "--also-config", str(dinov3),
               "--data-dir", str(data), "--output-dir", str(out), "--max-iter", "2",
               "DATASETS.DWD_PREFIX", "tiny", "SOLVER.CHECKPOINT_PERIOD", "100",
               "MODEL.VIT.DEPTH", "4", *TINY_OPTS])
    table = (out / "comparison_foundations.md").read_text()
    assert "| soma | dinov2 (random init) |" in table
    assert "| soma | dinov3 (dinov3_tiny_pretrain.pth) |" in table
    rows = json.loads((out / "tiny_dinov3" / "dg_results.json").read_text())["rows"]
    assert [r["run"] for r in rows] == ["soma (seed 0)"]
    assert table in capsys.readouterr().out


def test_pretraining_writes_the_official_dinov3_layout(tmp_path):
    """tools/pretrain_synthetic_vit.py --family dinov3 (tiny): the EMA teacher is written in the
    official DINOv3 layout, which the public loader reads back into exactly the teacher."""
    from soma_d2.pretrain import (
        PretrainConfig,
        pretrain,
        render_scene_bank,
        to_official_dinov3_state_dict,
    )
    from soma_d2.pretrain.trainer import STATE_FILE

    cfg = PretrainConfig(output=str(tmp_path / "vit.pth"), work_dir=str(tmp_path / "work"),
                         steps=3, embed_dim=DIM, depth=2, num_heads=HEADS, image_size=64,
                         num_scenes=2, crop_sides=(32, 64), tokens_per_step=32, warmup_steps=1,
                         checkpoint_every=3, decoder_dim=32, family="dinov3")
    history = pretrain(cfg, bank=render_scene_bank(2, 64, seed=0, progress=False),
                       progress=False)
    assert len(history) == 3 and all(torch.isfinite(torch.tensor(r["total"])) for r in history)
    raw = torch.load(cfg.output, weights_only=True)
    assert detect_dinov3_layout(raw) == "official" and "storage_tokens" in raw
    assert raw["blocks.0.attn.qkv.bias_mask"][DIM:2 * DIM].abs().max() == 0
    teacher = torch.load(tmp_path / "work" / STATE_FILE, weights_only=True)["teacher"]
    loaded = load_dinov3_weights(cfg.output)
    assert all(torch.equal(loaded[k], teacher[k]) for k in teacher)
    assert convert_dinov3_state_dict(raw).config["num_heads"] == HEADS
    with pytest.raises(ValueError, match="family must be one of"):
        PretrainConfig(family="dinov4")
    again = to_official_dinov3_state_dict(teacher, HEADS)
    assert again.keys() == raw.keys()
