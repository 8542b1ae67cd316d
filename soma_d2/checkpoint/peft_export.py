"""Share a SoMA-tuned DINOv2 outside soma-d2: a PEFT LoRA adapter for transformers, or timm weights.

The SoMA layer computes ``W_res x + s B A x`` with the frozen residual ``W_res = W - s B0 A0``
(``B0 A0``: the decomposition the layer started from). Over the ORIGINAL pretrained ``W`` the
trained update is therefore ``s (B A - B0 A0) = [s B | -s B0] [A ; A0]``: exactly a LoRA of rank
``2r`` with the scaling folded into ``lora_B``, so PEFT's own scaling is set to 1
(``lora_alpha = r``). ``lora`` and ``released`` modes keep the full ``W`` as the base, so their
update is the rank-``r`` LoRA ``[s B] [A]``. ``B0`` and ``A0`` are not stored by the layer; they
are taken from a snapshot of the model built from the pretrained weights before the trained state
was loaded (:func:`capture_initial_state`), and the frozen residuals of the trained model are
checked against that snapshot, so the export never pairs factors with another base.

Trained biases are exported through PEFT's own bias handling: ``bias="lora_only"`` stores the bias
of every LoRA-wrapped module (``...base_layer.bias``) and PEFT loads it over the base model's bias,
which is exact for SoMA's ``bias="adapted"`` (only biases of adapted layers train).
``modules_to_save`` would copy whole Linear modules (weights included) and cannot wrap a module
that also carries a LoRA. When other biases changed (SoMA ``bias="all"``) ``bias="all"`` is used
and every bias of the model is stored. Any other changed parameter (a norm weight, a layer-scale,
a full fine-tune) has no LoRA form and is refused by name; the mask token, which DINOv2 features
never read, is left out with a note.
"""
from __future__ import annotations

import copy
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..soma import SoMALinear, merge_soma
from ..utils import atomic_write, atomic_write_text

__all__ = [
    "PeftExport",
    "capture_initial_state",
    "hf_module_naming",
    "peft_lora_export",
    "timm_state_dict",
    "write_peft_adapter",
]

FROZEN_RTOL = 1e-6
_IGNORED = ("mask_token",)
# our block-relative linear name -> transformers names: (attention module, mlp, swiglu mlp)
_NEW_NAMES = {
    "attn.q": ["attention.q_proj"], "attn.k": ["attention.k_proj"],
    "attn.v": ["attention.v_proj"], "attn.proj": ["attention.o_proj"],
    "mlp.fc1": ["mlp.fc1"], "mlp.fc2": ["mlp.fc2"],
    "swiglu.fc1": ["mlp.gate_proj", "mlp.up_proj"], "swiglu.fc2": ["mlp.down_proj"],
}
_OLD_NAMES = {
    "attn.q": ["attention.attention.query"], "attn.k": ["attention.attention.key"],
    "attn.v": ["attention.attention.value"], "attn.proj": ["attention.output.dense"],
    "mlp.fc1": ["mlp.fc1"], "mlp.fc2": ["mlp.fc2"],
    "swiglu.fc1": ["mlp.weights_in"], "swiglu.fc2": ["mlp.weights_out"],
}
_GLOBAL_NAMES = {
    "patch_embed.proj": "embeddings.patch_embeddings.projection",
    "norm": "layernorm",
}
# DINOv3 (our DinoV3VisionTransformer -> transformers' DINOv3ViTModel, "model.layer.N.")
_DINOV3_NAMES = {
    "attn.q": "attention.q_proj", "attn.k": "attention.k_proj", "attn.v": "attention.v_proj",
    "attn.proj": "attention.o_proj", "mlp.fc1": "mlp.up_proj", "mlp.fc2": "mlp.down_proj",
    "mlp.w1": "mlp.gate_proj", "mlp.w2": "mlp.up_proj", "mlp.w3": "mlp.down_proj",
    "norm1": "norm1", "norm2": "norm2",
}
_DINOV3_GLOBAL_NAMES = {"patch_embed.proj": "embeddings.patch_embeddings", "norm": "norm"}


@dataclass
class PeftExport:
    """Tensors (file keys) and ``adapter_config.json`` content of a PEFT LoRA adapter, plus notes."""

    tensors: dict[str, torch.Tensor]
    config: dict[str, Any]
    notes: list[str] = field(default_factory=list)


def capture_initial_state(vit: nn.Module) -> dict[str, torch.Tensor]:
    """CPU copy of the injected ViT's state before a trained state is loaded into it.

    It holds each SoMA layer's starting factors ``A0``, ``B0`` and frozen residual, and every other
    parameter as decomposed from the pretrained weights: the reference :func:`peft_lora_export`
    compares the trained model with.
    """
    return {k: v.detach().cpu().clone() for k, v in vit.state_dict().items()}


def hf_module_naming() -> str:
    """``"new"`` (``q_proj``/``o_proj``, transformers >= 5) or ``"old"`` (``attention.attention.query``)
    as the installed transformers names ``Dinov2Model``'s modules; ``"new"`` without transformers."""
    try:
        from transformers import Dinov2Config, Dinov2Model
    except ImportError:
        return "new"
    config = Dinov2Config(hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                          intermediate_size=16, image_size=4, patch_size=2)
    with torch.device("meta"):
        names = {n for n, _ in Dinov2Model(config).named_modules()}
    return "new" if "encoder.layer.0.attention.q_proj" in names else "old"


def _hf_names(name: str, swiglu: bool, naming: str) -> list[str]:
    """transformers module name(s) of one of our linear/norm modules (``blocks.3.attn.q``...);
    ``naming`` "dinov3" maps onto ``DINOv3ViTModel``."""
    if naming == "dinov3":
        return [_dinov3_hf_name(name)]
    if name in _GLOBAL_NAMES:
        return [_GLOBAL_NAMES[name]]
    parts = name.split(".")
    if parts[0] != "blocks" or len(parts) < 3 or not parts[1].isdigit():
        raise ValueError(f"no transformers Dinov2Model module corresponds to '{name}'")
    rest = ".".join(parts[2:])
    table = _NEW_NAMES if naming == "new" else _OLD_NAMES
    key = f"swiglu.{parts[3]}" if swiglu and parts[2] == "mlp" else rest
    if rest in ("norm1", "norm2"):
        targets = [rest]
    elif key in table:
        targets = table[key]
    else:
        raise ValueError(f"no transformers Dinov2Model module corresponds to '{name}'")
    return [f"encoder.layer.{parts[1]}.{t}" for t in targets]


def _dinov3_hf_name(name: str) -> str:
    if name in _DINOV3_GLOBAL_NAMES:
        return _DINOV3_GLOBAL_NAMES[name]
    parts = name.split(".")
    rest = ".".join(parts[2:])
    if parts[0] != "blocks" or len(parts) < 3 or not parts[1].isdigit() or (
            rest not in _DINOV3_NAMES):
        raise ValueError(f"no transformers DINOv3ViTModel module corresponds to '{name}'")
    return f"model.layer.{parts[1]}.{_DINOV3_NAMES[rest]}"


def _row_split(tensor: torch.Tensor, parts: int) -> list[torch.Tensor]:
    """SwiGLU's fused ``fc1`` is ``[gate; up]`` (rows); transformers keeps them as two linears."""
    return list(tensor.chunk(parts, dim=0)) if parts > 1 else [tensor]


def _changed(now: torch.Tensor, before: torch.Tensor) -> bool:
    now, before = now.detach().cpu().double(), before.double()
    tol = FROZEN_RTOL * float(before.abs().max()) + 1e-12
    return now.shape != before.shape or float((now - before).abs().max()) > tol


def _lora_factors(layer: SoMALinear, initial: dict[str, torch.Tensor],
                  name: str) -> tuple[torch.Tensor, torch.Tensor]:
    s = layer.scaling
    a, b = layer.A.detach().cpu().double(), layer.B.detach().cpu().double()
    if layer.init in ("lora", "released"):  # the frozen base is the full pretrained W
        return a, s * b
    a0, b0 = initial[f"{name}.A"].double(), initial[f"{name}.B"].double()
    return torch.cat([a, a0], dim=0), torch.cat([s * b, -s * b0], dim=1)


def _check_vit(vit: nn.Module, source_patch_size: int | None) -> None:
    if not hasattr(vit, "blocks") or not hasattr(vit, "patch_embed"):
        raise TypeError(f"{type(vit).__name__} is not a DINOv2 ViT (no blocks/patch_embed); pass "
                        "the backbone's .net")
    patch = int(getattr(vit, "patch_size", 0))
    if source_patch_size is not None and patch != int(source_patch_size):
        raise ValueError(
            f"this backbone uses patch size {patch} (its kernel was resampled from the "
            f"pretrained patch size {source_patch_size}), but transformers' Dinov2Model loaded "
            f"from the original weights has patch size {source_patch_size}: a LoRA adapter only "
            "changes linear layers and cannot express the resampled patch embedding. Export with "
            "--format timm (merged weights at the trained patch size) instead"
        )
    if any(m.merged for m in vit.modules() if isinstance(m, SoMALinear)):
        raise ValueError("unmerge() the SoMA layers before exporting (the residual is needed)")


def peft_lora_export(vit: nn.Module, initial: dict[str, torch.Tensor],
                     source_patch_size: int | None = None,
                     base_model_name_or_path: str | None = None,
                     naming: str | None = None) -> PeftExport:
    """PEFT LoRA adapter (for transformers' ``Dinov2Model`` over the original weights) of a trained
    SoMA ViT; ``initial`` is :func:`capture_initial_state` of the same model before training.

    ``source_patch_size`` is the patch size of the original pretrained file (a different patch
    size in ``vit`` is refused, see :func:`_check_vit`). Raises ValueError naming any parameter
    whose change a LoRA adapter cannot carry, or any frozen residual that differs from the snapshot.
    """
    _check_vit(vit, source_patch_size)
    dinov3 = hasattr(vit, "rope_embed")  # DinoV3VisionTransformer: RoPE, no position embedding
    naming = "dinov3" if dinov3 else (naming or hf_module_naming())
    swiglu = any(type(b.mlp).__name__ == "GluMlp" for b in vit.blocks)
    layers = {n: m for n, m in vit.named_modules() if isinstance(m, SoMALinear)}
    if not layers:
        raise ValueError("the backbone has no SoMA layers; nothing to export as a LoRA adapter")
    missing = [k for n in layers for k in (f"{n}.A", f"{n}.B", f"{n}.weight") if k not in initial]
    if missing:
        raise ValueError(f"the initial-state snapshot lacks {missing[:6]}; take it with "
                         "capture_initial_state on the injected model before loading weights")
    notes: list[str] = []
    residual_changed = [n for n, m in layers.items() if _changed(m.weight, initial[f"{n}.weight"])]
    if residual_changed:
        raise ValueError(
            f"the frozen residuals of {residual_changed[:6]} differ from those decomposed from "
            "the pretrained weights: the checkpoint was trained from other pretrained weights "
            "(or another decomposition); export needs the exact pretrained file it started from"
        )
    layer_params = {f"{n}.{k}" for n in layers for k in ("A", "B", "weight", "bias")}
    other_biases, refused = [], []
    for pname, param in vit.named_parameters():
        if pname in layer_params or not _changed(param, initial[pname]):
            continue
        if pname in _IGNORED:
            notes.append(f"'{pname}' changed but is not used by DINOv2 features; not exported")
        elif pname.endswith(".bias"):
            other_biases.append(pname)
        else:
            refused.append(pname)
    if refused:
        raise ValueError(
            f"parameters {refused[:8]} changed in training; a LoRA adapter cannot carry them "
            "(only SoMA factors and biases are exportable); use --format timm for merged weights"
        )
    bias_mode = "all" if other_biases else "lora_only"
    prefix = "base_model.model."
    tensors: dict[str, torch.Tensor] = {}
    ranks: dict[str, int] = {}
    wrapped: set[str] = set()
    for name, layer in layers.items():
        a, b = _lora_factors(layer, initial, name)
        targets = _hf_names(name, swiglu, naming)
        for target, b_part in zip(targets, _row_split(b, len(targets)), strict=True):
            tensors[f"{prefix}{target}.lora_A.weight"] = a.float().contiguous()
            tensors[f"{prefix}{target}.lora_B.weight"] = b_part.float().contiguous()
            ranks[target] = a.shape[0]
            wrapped.add(target)
    for pname, param in vit.named_parameters():
        module = pname.rpartition(".")[0]
        is_layer_bias = pname.endswith(".bias") and module in layers
        if not pname.endswith(".bias") or not (is_layer_bias or bias_mode == "all"):
            continue
        targets = _hf_names(module, swiglu, naming)
        for target, part in zip(targets, _row_split(param.detach().cpu(), len(targets)),
                                strict=True):
            stem = f"{target}.base_layer" if target in wrapped else target
            tensors[f"{prefix}{stem}.bias"] = part.float().contiguous()
    rank = Counter(ranks.values()).most_common(1)[0][0]
    pattern = {t: r for t, r in ranks.items() if r != rank}
    registers = int(getattr(vit, "num_register_tokens", 0) or 0)
    config = {
        "peft_type": "LORA",
        "task_type": None,
        "auto_mapping": {"base_model_class": "DINOv3ViTModel" if dinov3
                         else "Dinov2WithRegistersModel" if registers else "Dinov2Model",
                         "parent_library": "transformers"},
        "base_model_name_or_path": base_model_name_or_path,
        "revision": None,
        "inference_mode": True,
        "r": rank,
        "lora_alpha": rank,
        "rank_pattern": pattern,
        "alpha_pattern": dict(pattern),
        "target_modules": sorted(ranks),
        "bias": bias_mode,
        "lora_bias": False,
        "lora_dropout": 0.0,
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "modules_to_save": None,
        "layers_to_transform": None,
        "layers_pattern": None,
    }
    grid = getattr(vit, "pos_grid", None)
    notes.append(f"{len(layers)} SoMA layers -> {len(ranks)} LoRA modules of rank {rank}"
                 + (f" (others {sorted(set(pattern.values()))})" if pattern else "")
                 + f", bias={bias_mode!r}, scaling folded into lora_B (lora_alpha = r)")
    if grid is not None:
        notes.append(f"the backbone's position grid is {grid[0]}x{grid[1]} (patch "
                     f"{vit.patch_size}); transformers resamples the original grid to each "
                     "input's grid at run time (bicubic, by size), so features agree exactly at "
                     f"{grid[0] * vit.patch_size}x{grid[1] * vit.patch_size} px")
    return PeftExport(tensors=tensors, config=config, notes=notes)


def write_peft_adapter(export: PeftExport, directory: str | os.PathLike) -> list[str]:
    """Write ``adapter_config.json`` and ``adapter_model.safetensors`` atomically; returns paths."""
    from safetensors.torch import save as save_bytes

    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    weights = os.path.join(directory, "adapter_model.safetensors")
    config = os.path.join(directory, "adapter_config.json")
    blob = save_bytes(export.tensors, metadata={"format": "pt"})
    atomic_write(weights, "wb", lambda f: f.write(blob))
    atomic_write_text(json.dumps(export.config, indent=2, sort_keys=True) + "\n", config)
    return [config, weights]


def timm_state_dict(vit: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Merged weights in the layout of timm's ``vit_*_patch14*_dinov2`` and the ``create_model``
    kwargs they need (patch size and image size of the trained backbone).

    SoMA layers are merged on a copy (``W_res + s B A``); q, k, v are fused back into ``qkv``; with
    registers, timm keeps no class position (its value goes into ``cls_token``) and calls the
    register tokens ``reg_token``. The mask token is dropped (timm has none).
    """
    _check_vit(vit, None)
    merged = merge_soma(copy.deepcopy(vit).cpu())
    state = {k: v.detach().clone() for k, v in merged.state_dict().items()}
    state.pop("mask_token", None)
    if hasattr(merged, "rope_embed"):
        return _timm_dinov3_state_dict(merged, state)
    for i in range(len(merged.blocks)):
        stem = f"blocks.{i}.attn."
        for kind in ("weight", "bias"):
            parts = [state.pop(f"{stem}{p}.{kind}", None) for p in "qkv"]
            if all(p is not None for p in parts):
                state[f"{stem}qkv.{kind}"] = torch.cat(parts, dim=0)
    registers = int(getattr(merged, "num_register_tokens", 0) or 0)
    if registers:
        pos = state["pos_embed"]
        state["cls_token"] = state["cls_token"] + pos[:, :1]
        state["pos_embed"] = pos[:, 1:].contiguous()
        state["reg_token"] = state.pop("register_tokens")
    grid = merged.pos_grid
    kwargs = {
        "patch_size": merged.patch_size,
        "img_size": [grid[0] * merged.patch_size, grid[1] * merged.patch_size],
        "embed_dim": merged.embed_dim,
        "depth": merged.depth,
        "num_heads": merged.num_heads,
        "reg_tokens": registers,
    }
    return {k: v.contiguous() for k, v in state.items()}, kwargs


_TIMM_DINOV3 = {"ls1.gamma": "gamma_1", "ls2.gamma": "gamma_2", "mlp.w1": "mlp.fc1_g",
                "mlp.w2": "mlp.fc1_x", "mlp.w3": "mlp.fc2", "attn.q.bias": "attn.q_bias",
                "attn.v.bias": "attn.v_bias"}


def _timm_dinov3_state_dict(merged: nn.Module, state: dict[str, torch.Tensor]
                            ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Merged DINOv3 weights in the layout of timm's ``vit_*_patch16_dinov3[_qkvb]`` (Eva):
    fused ``qkv`` weight, ``q_bias``/``v_bias``, ``gamma_1``/``gamma_2``, ``reg_token``, SwiGLU
    ``fc1_g``/``fc1_x``/``fc2``. timm's Eva has no k bias, so a ViT with one is refused."""
    if any(k.endswith("attn.k.bias") for k in state):
        raise ValueError("this DINOv3 ViT has a k bias, which timm's vit_*_patch16_dinov3 cannot "
                         "hold; export it with the PEFT format instead")
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        for ours, theirs in _TIMM_DINOV3.items():
            if key.endswith("." + ours):
                key = key[: -len(ours)] + theirs
                break
            if f".{ours}." in key:  # a module name: mlp.w1.weight -> mlp.fc1_g.weight
                key = key.replace(f".{ours}.", f".{theirs}.")
                break
        out[key] = value
    for i in range(len(merged.blocks)):
        stem = f"blocks.{i}.attn."
        out[f"{stem}qkv.weight"] = torch.cat([out.pop(f"{stem}{p}.weight") for p in "qkv"])
    if "register_tokens" in out:
        out["reg_token"] = out.pop("register_tokens")
    swiglu = any(k.endswith("mlp.fc1_g.weight") for k in out)
    hidden = int(out["blocks.0.mlp.fc2.weight"].shape[1])
    kwargs = {
        "embed_dim": merged.embed_dim,
        "depth": merged.depth,
        "num_heads": merged.num_heads,
        "patch_size": merged.patch_size,
        "num_reg_tokens": merged.num_register_tokens,
        "qkv_bias": any(k.endswith("attn.q_bias") for k in out),
        "swiglu_mlp": swiglu,
        "mlp_ratio": hidden / merged.embed_dim,
        "init_values": 1e-5,
    }
    if swiglu:
        kwargs["swiglu_align_to"] = 8  # separate gate / x linears, as timm's S+ and H+ ports
    return {k: v.contiguous() for k, v in out.items()}, kwargs
