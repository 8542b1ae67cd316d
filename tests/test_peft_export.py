"""Sharing a SoMA-tuned DINOv2: PEFT LoRA adapters checked by PEFT + transformers, timm weights
checked by timm.

The references are independent implementations: transformers' ``Dinov2Model`` holding the
ORIGINAL pretrained weights with ``PeftModel.from_pretrained`` on top, and timm's DINOv2 ViT
loading the merged state dict. Both must reproduce the fine-tuned soma-d2 backbone's tokens.
"""
from __future__ import annotations

import copy
import json
from functools import partial

import pytest
import timm
import torch
from peft import PeftModel
from safetensors.torch import save_file
from transformers import (
    Dinov2Config,
    Dinov2Model,
    Dinov2WithRegistersConfig,
    Dinov2WithRegistersModel,
)
from vit_helpers import TINY_DET, nudged_tiny_detector, randomize_vit

from soma_d2.checkpoint import convert_dinov2_state_dict, read_weight_file
from soma_d2.checkpoint.peft_export import (
    capture_initial_state,
    hf_module_naming,
    peft_lora_export,
    timm_state_dict,
    write_peft_adapter,
)
from soma_d2.modeling.vit import DinoVisionTransformer
from soma_d2.soma import SoMAConfig, inject_soma

TOL = 1e-4


_randomize = partial(randomize_vit, keys=("lambda1", "gamma", "norm", "token", "pos"), scale=0.3,
                     bias_scale=0.1)


def _hf_model(kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    common = dict(hidden_size=48, num_hidden_layers=3, num_attention_heads=4, image_size=56,
                  patch_size=14)
    if kind == "registers":
        return _randomize(Dinov2WithRegistersModel(
            Dinov2WithRegistersConfig(num_register_tokens=2, **common)))
    return _randomize(Dinov2Model(Dinov2Config(use_swiglu_ffn=kind == "swiglu", **common)))


def _tuned_vit(path, bias: str = "adapted", init: str = "minor", patch_size=None):
    """Our ViT from the pretrained file, SoMA-injected, then 'trained' (random factor/bias moves)."""
    raw, meta = read_weight_file(path)
    conv = convert_dinov2_state_dict(raw, source=str(path), meta=meta, patch_size=patch_size)
    vit = DinoVisionTransformer(**{**conv.config, "num_heads": 4})
    vit.load_state_dict(conv.state_dict)
    inject_soma(vit, SoMAConfig(rank=3, start_block=1, bias=bias, init=init,
                                extra_trainable=["mask_token"]))
    initial = capture_initial_state(vit)
    base = copy.deepcopy(vit).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _, p in vit.named_parameters():
            if p.requires_grad:
                p.add_(0.2 * p.abs().mean() * torch.randn(p.shape, generator=gen) + 0.01)
    return vit.eval(), initial, conv, base


@pytest.mark.parametrize("kind", ["mlp", "swiglu", "registers"])
def test_peft_adapter_reproduces_the_tuned_backbone(tmp_path, kind):
    hf = _hf_model(kind)
    path = tmp_path / "pretrained.safetensors"
    save_file({k: v.contiguous() for k, v in hf.state_dict().items()}, path)
    vit, initial, conv, _ = _tuned_vit(path)
    export = peft_lora_export(vit, initial, source_patch_size=conv.patch_size[0])
    write_peft_adapter(export, tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 6 and config["lora_alpha"] == 6 and config["bias"] == "lora_only"
    assert len(config["target_modules"]) == 2 * (7 if kind == "swiglu" else 6)

    x = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        tuned = vit.forward_features(x)
        before = hf(pixel_values=x).last_hidden_state
        peft = PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()
        adapted = peft(pixel_values=x).last_hidden_state
        merged = peft.merge_and_unload().eval()
        plain = merged(pixel_values=x).last_hidden_state
    change = (tuned - before).abs().max().item()
    diff = (adapted - tuned).abs().max().item()
    diff_merged = (plain - tuned).abs().max().item()
    print(f"{kind}: fine-tuning moved tokens by {change:.3f}; PEFT max abs diff {diff:.2e}, "
          f"merged {diff_merged:.2e}")
    assert change > 100 * TOL  # the test would pass trivially if training changed nothing
    assert diff <= TOL and diff_merged <= TOL
    assert not any("lora" in n for n, _ in merged.named_parameters())


def test_lora_mode_and_all_biases(tmp_path):
    hf = _hf_model("mlp")
    path = tmp_path / "pretrained.safetensors"
    save_file({k: v.contiguous() for k, v in hf.state_dict().items()}, path)
    vit, initial, _, _ = _tuned_vit(path, bias="all", init="lora")
    export = peft_lora_export(vit, initial, source_patch_size=14)
    assert export.config["r"] == 3 and export.config["bias"] == "all"
    assert "base_model.model.layernorm.bias" in export.tensors
    write_peft_adapter(export, tmp_path / "adapter")
    x = torch.randn(1, 3, 56, 56)
    with torch.no_grad():
        peft = PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()
        diff = (peft(pixel_values=x).last_hidden_state - vit.forward_features(x)).abs().max()
    assert diff.item() <= TOL


def test_refusals_name_the_problem(tmp_path):
    hf = _hf_model("mlp")
    path = tmp_path / "pretrained.safetensors"
    save_file({k: v.contiguous() for k, v in hf.state_dict().items()}, path)
    vit16, initial16, _, _ = _tuned_vit(path, patch_size=16)
    with pytest.raises(ValueError, match="Dinov2Model loaded from the original weights has patch "
                                         "size 14"):
        peft_lora_export(vit16, initial16, source_patch_size=14)
    vit, initial, _, _ = _tuned_vit(path)
    with torch.no_grad():
        vit.blocks[2].ls1.gamma.add_(0.1)
    with pytest.raises(ValueError, match=r"blocks\.2\.ls1\.gamma"):
        peft_lora_export(vit, initial, source_patch_size=14)
    vit, initial, _, _ = _tuned_vit(path)
    with torch.no_grad():
        vit.blocks[1].attn.q.weight.add_(1e-3)
    with pytest.raises(ValueError, match="frozen residuals"):
        peft_lora_export(vit, initial, source_patch_size=14)


def test_installed_transformers_uses_the_names_we_map():
    assert hf_module_naming() == "new"


@pytest.mark.parametrize("registers", [0, 4])
def test_timm_merged_state_dict_matches_timm(tmp_path, registers):
    name = "vit_small_patch14_reg4_dinov2" if registers else "vit_small_patch14_dinov2"
    torch.manual_seed(0)
    model = _randomize(timm.create_model(name, pretrained=False, img_size=56, depth=3,
                                         embed_dim=48, num_heads=4))
    path = tmp_path / "timm.pth"
    torch.save(model.state_dict(), path)
    vit, _, _, base = _tuned_vit(path, patch_size=16)  # resampled patch: fine for timm
    state, kwargs = timm_state_dict(vit)
    assert kwargs["patch_size"] == 16 and kwargs["reg_tokens"] == registers
    target = timm.create_model(name, pretrained=False, img_size=kwargs["img_size"],
                               patch_size=16, depth=3, embed_dim=48, num_heads=4)
    target.load_state_dict(state)
    x = torch.randn(2, 3, *kwargs["img_size"])
    with torch.no_grad():
        out = target.eval().forward_features(x)
        diff = (out - vit.forward_features(x)).abs().max().item()
        change = (out - base.forward_features(x)).abs().max().item()
    print(f"timm registers={registers}: tuning moved tokens by {change:.3f}, max abs diff {diff:.2e}")
    assert diff <= TOL and change > 100 * TOL


def test_export_tool_on_a_detectron2_checkpoint(tmp_path, capsys):
    """tools/export_peft.py end to end on the tiny detector: the official-style patch-16 backbone
    is refused for PEFT with the patch size transformers gets, and exported for timm."""
    import runpy
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    torch.manual_seed(0)
    source = _randomize(timm.create_model("vit_small_patch14_dinov2", pretrained=False,
                                          img_size=112, embed_dim=64, depth=4, num_heads=2))
    pretrained = tmp_path / "dinov2_tiny.pth"
    torch.save(source.state_dict(), pretrained)
    model, opts, weights = nudged_tiny_detector(pretrained, tmp_path)
    tool = runpy.run_path(str(root / "tools/export_peft.py"))["main"]
    args = ["--config-file", TINY_DET, "--weights", str(weights)]
    with pytest.raises(SystemExit) as exit_info:
        tool(args + ["--output", str(tmp_path / "peft"), *opts])
    assert exit_info.value.code == 2
    assert "has patch size 14" in capsys.readouterr().err
    out = tmp_path / "timm.safetensors"
    tool(args + ["--format", "timm", "--output", str(out), *opts])
    kwargs = json.loads((tmp_path / "timm.json").read_text())
    from safetensors.torch import load_file

    target = timm.create_model("vit_small_patch14_dinov2", pretrained=False,
                               img_size=kwargs["img_size"], patch_size=kwargs["patch_size"],
                               embed_dim=64, depth=4, num_heads=2)
    target.load_state_dict(load_file(out))
    x = torch.randn(1, 3, *kwargs["img_size"])
    vit = model.backbone.net.eval()
    with torch.no_grad():
        diff = (target.eval().forward_features(x) - vit.forward_features(x)).abs().max().item()
    assert diff <= TOL
