"""load_dinov2_weights: every public DINOv2 layout gives the same function as its own model.

References nobody here wrote: timm's DINOv2 ViTs and HF transformers' Dinov2 models, built with
random weights (random layer-scales too) and saved to disk; our ViT loaded from those files must
reproduce their final-norm tokens.
"""
from __future__ import annotations

import ast
import runpy
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed
from timm.layers import resample_patch_embed as timm_resample_patch_embed
from torch import nn
from transformers import (
    Dinov2Config,
    Dinov2ForImageClassification,
    Dinov2WithRegistersConfig,
    Dinov2WithRegistersModel,
)
from vit_helpers import VIT_KEYS, randomize_vit

from soma_d2.checkpoint import (
    convert_dinov2_state_dict,
    infer_vit_config,
    load_dinov2_weights,
    read_weight_file,
)
from soma_d2.layers.vit_tensors import resample_patch_embed
from soma_d2.modeling.vit import DinoVisionTransformer

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-4


_randomize = partial(randomize_vit, keys=(*VIT_KEYS, "position_embeddings"))


def _ours(path: Path, **kwargs) -> DinoVisionTransformer:
    """Our ViT from a file, configured as the conversion says (incl. the source's pos-embed
    resampling convention), cross-checked against the plain ``load_dinov2_weights`` result."""
    raw, meta = read_weight_file(path)
    conversion = convert_dinov2_state_dict(raw, source=str(path), meta=meta)
    state = load_dinov2_weights(path)
    assert state.keys() == conversion.state_dict.keys()
    assert all(torch.equal(state[k], conversion.state_dict[k]) for k in state)
    config = {**infer_vit_config(state), **conversion.config}
    model = DinoVisionTransformer(**{**config, **kwargs})
    model.load_state_dict(state)
    return model.eval()



def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def _assert_matches_hf(path: Path, hf: nn.Module, sizes: tuple[tuple[int, int], ...], batch: int,
                       label: str) -> DinoVisionTransformer:
    """Our ViT loaded from `path` (4 heads) gives transformers' `hf` last hidden state within TOL
    at each input size, a fresh load per size as a user would; returns the last one loaded."""
    for size in sizes:
        ours = _ours(path, num_heads=4)
        x = torch.randn(batch, 3, *size)
        with torch.no_grad():
            diff = _max_diff(ours.forward_features(x), hf(pixel_values=x).last_hidden_state)
        print(f"{label} {size}: max abs diff {diff:.2e}")
        assert diff <= TOL
    return ours


def _timm(name: str, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return _randomize(timm.create_model(name, pretrained=False, **kwargs))


@pytest.fixture(scope="module")
def timm_models():
    return {
        "plain": _timm("vit_small_patch14_dinov2", img_size=98, depth=2, embed_dim=64,
                       num_heads=4),
        "reg4": _timm("vit_small_patch14_reg4_dinov2", img_size=98, depth=2, embed_dim=64,
                      num_heads=4),
        "swiglu": _timm("vit_giant_patch14_dinov2", img_size=56, depth=2, embed_dim=96,
                        num_heads=4),
    }


@pytest.mark.parametrize("variant,suffix", [("plain", ".pth"), ("reg4", ".safetensors"),
                                            ("swiglu", ".pth")])
def test_timm_layout_matches_timm(tmp_path, timm_models, variant, suffix):
    model = timm_models[variant]
    path = tmp_path / f"timm_{variant}{suffix}"
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, path) if suffix == ".safetensors" else torch.save(state, path)
    ours = _ours(path, num_heads=model.blocks[0].attn.num_heads)
    size = model.patch_embed.img_size
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        diff = _max_diff(ours.forward_features(x), model.forward_features(x))
    print(f"timm {variant}: forward_features max abs diff {diff:.2e}")
    assert diff <= TOL
    assert ours.num_register_tokens == (4 if variant == "reg4" else 0)


def _official_from_timm(model: nn.Module) -> dict[str, torch.Tensor]:
    """Rewrite a timm DINOv2 state dict in the official key layout (fused qkv, w12/w3, registers)."""
    swiglu = isinstance(model.blocks[0].mlp, timm.layers.GluMlp)
    state = {}
    for key, value in model.state_dict().items():
        if swiglu:
            key = key.replace("mlp.fc1", "mlp.w12").replace("mlp.fc2", "mlp.w3")
        state[key] = value.clone()
    dim = state["cls_token"].shape[-1]
    if "reg_token" in state:
        # timm folded the class position into cls_token; split it back into a random pair.
        pos0 = torch.randn(1, 1, dim)
        state["cls_token"] = state["cls_token"] - pos0
        state["pos_embed"] = torch.cat([pos0, state["pos_embed"]], dim=1)
        state["register_tokens"] = state.pop("reg_token")
    state["mask_token"] = torch.zeros(1, dim)
    return state


@pytest.mark.parametrize("variant", ["plain", "reg4", "swiglu"])
def test_official_layout_flat_chunked_and_wrapped(tmp_path, timm_models, variant):
    model = timm_models[variant]
    official = _official_from_timm(model)
    # BlockChunk models (block_chunks > 0) store block i as blocks.<chunk>.<i>; one block a chunk.
    chunked = {
        (f"blocks.{k.split('.')[1]}.{k[len('blocks.'):]}" if k.startswith("blocks.") else k): v
        for k, v in official.items()
    }
    teacher = {"teacher": {**{f"backbone.{k}": v for k, v in chunked.items()},
                           "dino_head.mlp.0.weight": torch.randn(8, 4)}, "iteration": 7}
    x = torch.randn(1, 3, *model.patch_embed.img_size)
    with torch.no_grad():
        reference = model.forward_features(x)
    for name, payload in (("flat", official), ("chunked", teacher)):
        path = tmp_path / f"dinov2_{variant}_{name}_pretrain.pth"
        torch.save(payload, path)
        ours = _ours(path, num_heads=model.blocks[0].attn.num_heads)
        with torch.no_grad():
            diff = _max_diff(ours.forward_features(x), reference)
        print(f"official {variant} ({name}): max abs diff {diff:.2e}")
        assert diff <= TOL


def test_official_file_is_mapped_and_qkv_split_without_copies(tmp_path, timm_models):
    # the file is memory-mapped copy-on-write and q, k, v are row views of the fused tensor: no
    # unpickling copy, no split copy, and writing to a loaded tensor leaves the file as it was
    official = _official_from_timm(timm_models["plain"])
    path = tmp_path / "dinov2_plain_pretrain.pth"
    torch.save(official, path)
    state = load_dinov2_weights(path)
    fused = official["blocks.1.attn.qkv.weight"]
    parts = [state[f"blocks.1.attn.{p}.weight"] for p in "qkv"]
    for part, expected in zip(parts, torch.chunk(fused, 3, dim=0), strict=True):
        assert torch.equal(part, expected) and part.is_contiguous()
    base = parts[0].untyped_storage().data_ptr()
    assert [p.untyped_storage().data_ptr() for p in parts] == [base] * 3
    step = parts[0].numel() * parts[0].element_size()
    assert [p.data_ptr() - base for p in parts] == [0, step, 2 * step]
    raw, _ = read_weight_file(path)
    assert str(path) in Path("/proc/self/maps").read_text()  # the kernel maps the file
    before = path.read_bytes()
    parts[1].add_(1.0)
    raw["cls_token"].zero_()
    assert path.read_bytes() == before
    again = load_dinov2_weights(path)
    assert torch.equal(again["blocks.1.attn.k.weight"], torch.chunk(fused, 3, dim=0)[1])
    assert torch.equal(again["cls_token"], official["cls_token"])


def test_legacy_torch_file_is_read_without_mapping(tmp_path, timm_models):
    official = _official_from_timm(timm_models["plain"])
    path = tmp_path / "dinov2_plain_legacy.pth"
    torch.save(official, path, _use_new_zipfile_serialization=False)
    raw, _ = read_weight_file(path)
    assert raw.keys() == official.keys()
    assert all(torch.equal(raw[k], v) for k, v in official.items())


def _hf_old_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The key names of transformers < 5 (query/key/value, output.dense, weights_in/out)."""
    old = {}
    for key, value in state.items():
        for new, legacy in (("attention.q_proj", "attention.attention.query"),
                            ("attention.k_proj", "attention.attention.key"),
                            ("attention.v_proj", "attention.attention.value"),
                            ("attention.o_proj", "attention.output.dense"),
                            ("mlp.down_proj", "mlp.weights_out")):
            key = key.replace(new, legacy)
        if "mlp.up_proj" in key:
            continue
        if "mlp.gate_proj" in key:
            value = torch.cat([value, state[key.replace("gate_proj", "up_proj")]], dim=0)
            key = key.replace("gate_proj", "weights_in")
        old[key] = value
    return old


@pytest.mark.parametrize("swiglu", [False, True])
def test_hf_dinov2_matches_transformers(tmp_path, swiglu):
    torch.manual_seed(0)
    config = Dinov2Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                          image_size=56, patch_size=14, use_swiglu_ffn=swiglu)
    classifier = Dinov2ForImageClassification(config)
    _randomize(classifier)
    hf = classifier.dinov2
    new_names = {k: v.contiguous() for k, v in classifier.state_dict().items()}
    assert any("q_proj" in k for k in new_names), "transformers key names changed"
    files = {"new": tmp_path / "hf_new.safetensors", "old": tmp_path / "hf_old.bin"}
    save_file(new_names, files["new"])
    torch.save({"model": _hf_old_names(new_names)}, files["old"])
    for names, path in files.items():
        ours = _assert_matches_hf(path, hf, ((56, 56), (70, 84)), batch=2,
                                  label=f"HF Dinov2 swiglu={swiglu} {names} names")
    assert type(ours.blocks[0].mlp) is (timm.layers.GluMlp if swiglu else timm.layers.Mlp)


def test_hf_dinov2_with_registers_matches_transformers(tmp_path):
    torch.manual_seed(0)
    config = Dinov2WithRegistersConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                       image_size=56, patch_size=14, num_register_tokens=4)
    hf = _randomize(Dinov2WithRegistersModel(config))
    path = tmp_path / "hf_reg.pth"
    torch.save(hf.state_dict(), path)
    _assert_matches_hf(path, hf, ((56, 56), (42, 70)), batch=1, label="HF Dinov2WithRegisters")


def _smooth_kernel(channels: int) -> torch.Tensor:
    coarse = torch.randn(channels, 3, 4, 4)
    return nn.functional.interpolate(coarse, size=(14, 14), mode="bilinear", align_corners=True)


def test_patch_kernel_resampling_14_to_16():
    torch.manual_seed(0)
    kernel = _smooth_kernel(8)
    bicubic = resample_patch_embed(kernel, 16)
    assert bicubic.shape == (8, 3, 16, 16)
    # Plain bicubic (official recipe) keeps the kernel's mean, so the response to a constant
    # image (= kernel sum) grows by the patch-area ratio (16/14)^2; checked per output channel.
    ratio = bicubic.sum(dim=(1, 2, 3)) / kernel.sum(dim=(1, 2, 3))
    print(f"bicubic 14->16 constant-image response ratio: {ratio.min():.4f}..{ratio.max():.4f} "
          f"(area ratio {(16 / 14) ** 2:.4f})")
    assert torch.allclose(ratio, torch.full_like(ratio, (16 / 14) ** 2), rtol=0.02)
    # FlexiViT pseudo-inverse: identical to timm's resample_patch_embed, and the constant-image
    # response is preserved exactly, for any kernel.
    rough = torch.randn(8, 3, 14, 14)
    flexi = resample_patch_embed(rough, 16, mode="flexi")
    assert _max_diff(flexi, timm_resample_patch_embed(rough, [16, 16])) <= 1e-4
    assert torch.allclose(flexi.sum(dim=(1, 2, 3)), rough.sum(dim=(1, 2, 3)), atol=1e-3)
    with pytest.raises(ValueError, match="'nearest'"):
        resample_patch_embed(kernel, 16, mode="nearest")


def test_patch16_and_training_grid(tmp_path, timm_models):
    model = timm_models["reg4"]
    path = tmp_path / "reg4.pth"
    torch.save(model.state_dict(), path)
    state = load_dinov2_weights(path, patch_size=16, image_size=(64, 96))
    assert state["patch_embed.proj.weight"].shape[-2:] == (16, 16)
    assert state["pos_embed"].shape == (1, 1 + 4 * 6, 64)
    reference = resample_abs_pos_embed(model.pos_embed.detach(), [4, 6], num_prefix_tokens=0,
                                       antialias=False)
    assert _max_diff(state["pos_embed"][:, 1:], reference) <= 1e-6
    ours = DinoVisionTransformer(img_size=(64, 96), patch_size=16, embed_dim=64, depth=2,
                                 num_heads=4, num_register_tokens=4, out_indices=(1,))
    ours.load_state_dict(state)
    assert ours(torch.randn(1, 3, 64, 96))["block1"].shape == (1, 64, 4, 6)
    flexi = load_dinov2_weights(path, patch_size=16, patch_resample="flexi")
    reference = timm_resample_patch_embed(model.patch_embed.proj.weight.detach(), [16, 16])
    assert _max_diff(flexi["patch_embed.proj.weight"], reference) <= 1e-4


def test_convert_tool_round_trip(tmp_path, timm_models, capsys):
    model = timm_models["plain"]
    src, dst = tmp_path / "vits14.pth", tmp_path / "out" / "vits16.pth"
    torch.save({"model": model.state_dict()}, src)
    main = runpy.run_path(str(ROOT / "tools" / "convert_dinov2.py"), run_name="convert")["main"]
    assert main([str(src), str(dst), "--patch-size", "16", "--image-size", "84", "112"]) == 0
    line = capsys.readouterr().out
    assert "timm" in line and "tensors" in line and "MiB" in line and "6x7" in line
    expected = load_dinov2_weights(src, patch_size=16, image_size=(84, 112))
    reloaded = load_dinov2_weights(dst)
    assert reloaded.keys() == expected.keys()
    assert all(torch.equal(reloaded[k], expected[k]) for k in expected)
    raw, meta = read_weight_file(dst)
    config = convert_dinov2_state_dict(raw, meta=meta).config
    assert (config["interpolate_offset"], config["interpolate_antialias"]) == (0.0, True)
    # A non-square grid cannot be read from the tensor shape; the tool's meta records it.
    assert load_dinov2_weights(dst, image_size=(96, 96))["pos_embed"].shape == (1, 37, 64)


def _expect_error(path: Path, *fragments: str, error=ValueError) -> None:
    with pytest.raises(error) as info:
        load_dinov2_weights(path)
    message = str(info.value)
    for fragment in (str(path), *fragments):
        assert fragment in message, f"{fragment!r} not in: {message}"


def test_bad_checkpoints_are_named(tmp_path, timm_models):
    base = {k: v.clone() for k, v in timm_models["plain"].state_dict().items()}
    cases = {
        "unknown.pth": ({**base, "blocks.0.attn.rel_pos_h": torch.zeros(3)},
                        ["unknown keys", "blocks.0.attn.rel_pos_h"]),
        "missing.pth": ({k: v for k, v in base.items() if k != "blocks.1.mlp.fc2.bias"},
                        ["missing keys", "blocks.1.mlp.fc2.bias"]),
        "shape.pth": ({**base, "blocks.0.ls1.gamma": torch.zeros(5)},
                      ["wrong shapes", "blocks.0.ls1.gamma"]),
        "qkv.pth": ({**base, "blocks.0.attn.qkv.weight": torch.zeros(10, 64)},
                    ["not divisible by 3"]),
        "resnet50.pth": ({"conv1.weight": torch.zeros(4, 3, 7, 7), "bn1.weight": torch.zeros(4),
                          "layer1.0.conv1.weight": torch.zeros(4, 4, 1, 1),
                          "fc.weight": torch.zeros(10, 4)},
                         ["not a DINOv2 ViT checkpoint", "no class token", "conv1.weight"]),
        "openai_clip.pth": ({"visual.class_embedding": torch.zeros(8),
                             "visual.positional_embedding": torch.zeros(5, 8),
                             "visual.transformer.resblocks.0.attn.in_proj_weight":
                                 torch.zeros(24, 8)},
                            ["no class token", "visual.class_embedding"]),
        "optimizer.pth": ({"epoch": 3, "lr": [0.1]}, ["non-tensor entries", "epoch"]),
    }
    for name, (payload, fragments) in cases.items():
        torch.save(payload, tmp_path / name)
        _expect_error(tmp_path / name, *fragments)
    clip = timm.create_model("vit_base_patch16_clip_224", pretrained=False, depth=1, embed_dim=32,
                             num_heads=2, img_size=32)
    torch.save(clip.state_dict(), tmp_path / "timm_clip.pth")
    _expect_error(tmp_path / "timm_clip.pth", "not a DINOv2 ViT checkpoint", "norm_pre.weight",
                  "blocks.0.ls1.gamma")
    (tmp_path / "weights.npz").write_bytes(b"\0")
    _expect_error(tmp_path / "weights.npz", "unsupported weight file type", "'.npz'")
    _expect_error(tmp_path / "absent.pth", error=FileNotFoundError)
    hf = {"embeddings.cls_token": torch.zeros(1, 1, 8),
          "encoder.layer.0.mlp.gate_proj.weight": torch.zeros(16, 8)}
    with pytest.raises(ValueError, match="gate_proj.weight.*up_proj"):
        convert_dinov2_state_dict(hf, source="hf.safetensors")


def test_loader_modules_import_only_torch_and_stdlib():
    # soma_d2.modeling imports Detectron2 and this loader; the loader must not import it back at
    # import time (circular import) nor pull Detectron2/timm/transformers into a bare import of
    # soma_d2.checkpoint. Only the key-schema check imports the model, inside the function.
    allowed = set(sys.stdlib_module_names) | {"__future__", "torch", "safetensors"}
    siblings = {"layers.vit_tensors", "safe_load", "hf_keys", "official_keys", "weight_file",
                "convert", "vit_schema", "vit_keys", "conversion", None}
    files = [ROOT / "soma_d2" / n for n in ("layers/vit_tensors.py", "checkpoint/safe_load.py",
                                           "checkpoint/vit_keys.py", "checkpoint/conversion.py")]
    files += sorted((ROOT / "soma_d2" / "checkpoint" / "dinov2").glob("*.py"))
    lazy = []
    for path in files:
        tree = ast.parse(path.read_text())
        top_level = set(map(id, tree.body))
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            if id(node) not in top_level:
                lazy.append((path.name, node.module))
                continue
            if isinstance(node, ast.ImportFrom) and node.level:
                assert node.module in siblings, (path.name, node.module)
            else:
                modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [
                    node.module]
                assert {m.split(".")[0] for m in modules} <= allowed, (path.name, modules)
    assert sorted(lazy) == [("vit_tensors.py", "timm.layers"),
                            ("weight_file.py", "safetensors.torch")]
    probe = ("import sys, soma_d2.checkpoint; "
             "print(sorted(m for m in ('detectron2', 'timm', 'transformers', 'scipy.optimize') "
             "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_one_import_path_for_the_conversion_api():
    """The loading API is `soma_d2.checkpoint`'s, the rest `soma_d2.checkpoint.dinov2`'s; the
    package forwards nothing else (no module __getattr__)."""
    from soma_d2 import checkpoint
    from soma_d2.checkpoint import dinov2

    assert checkpoint.load_dinov2_weights is dinov2.load_dinov2_weights
    assert not hasattr(checkpoint, "__getattr__")
    for name in ("detect_dinov2_layout", "Dinov2Conversion", "interpolate_pos_embed"):
        with pytest.raises(AttributeError):
            getattr(checkpoint, name)
