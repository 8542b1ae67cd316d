"""Load DINOv3 weights from any public layout into the layout of ``DinoV3VisionTransformer``.

DINOv3 ViTs circulate in three layouts (official, timm, HF ``DINOv3ViTModel``; see ``keys``).
The SoMA backbone needs q, k and v as separate linears, so every layout is renamed and split here:
the official fused ``qkv`` bias is multiplied by its ``bias_mask`` (the k bias is masked to zero,
and then dropped, as HF's ``key_bias=False`` does), timm's ``q_bias``/``v_bias`` become the q and v
biases. The stored RoPE periods of official files (bfloat16) are checked against the schedule the
model computes instead of being loaded. Anything that does not map is reported by name instead of
being silently dropped; only heads and pretraining-only modules are ignored.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from ...layers.vit_tensors import resample_patch_embed, rope_periods
from ..conversion import ViTConversion, check_schema
from ..dinov2.weight_file import read_weight_file, split_prefix
from . import keys
from .vit_schema import expected_dinov3_keys

__all__ = [
    "LAYOUTS",
    "Dinov3Conversion",
    "convert_dinov3_state_dict",
    "detect_dinov3_layout",
    "detect_vit_family",
    "infer_dinov3_config",
    "load_dinov3_weights",
]

LAYOUTS = {
    "official": "official DINOv3 (dinov3_vit*16_pretrain_*.pth)",
    "timm": "timm vit_*_patch16_dinov3",
    "hf": "HF transformers DINOv3ViTModel",
    "soma": "soma-d2 DINOv3 (already converted)",
}
_HEAD_DIM = 64  # every released DINOv3 ViT up to H+ (the head count is not stored by timm/HF)
_POS_KEYS = ("pos_embed", "embeddings.position_embeddings")


@dataclass
class Dinov3Conversion(ViTConversion):
    """A converted state dict plus what was detected and changed, for logs and tools."""

    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line: layout, size, and any resampling / dropped / filled keys."""
        return "; ".join(self._summary_parts(LAYOUTS, "storage tokens") + self.notes)


def detect_vit_family(state_dict: Mapping[str, torch.Tensor]) -> str:
    """``"dinov3"`` for a ViT state dict without an absolute position embedding, else ``"dinov2"``.

    Every DINOv2 layout stores ``pos_embed`` / ``embeddings.position_embeddings``; DINOv3 has RoPE
    and none. Raises ValueError (from the prefix search) if the mapping holds no class token.
    """
    _, inside, _ = split_prefix(state_dict, "<state dict>")
    return "dinov2" if any(k in inside for k in _POS_KEYS) else "dinov3"


def detect_dinov3_layout(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Name the layout of a DINOv3 state dict: ``official``, ``timm``, ``hf`` or ``soma``."""
    _, inside, _ = split_prefix(state_dict, "<state dict>")
    return _detect(inside)


def _detect(inside: Mapping[str, torch.Tensor]) -> str:
    if any(k.startswith("embeddings.") or keys.BLOCK_KEYS["hf"].match(k) for k in inside):
        return "hf"
    if any(re.fullmatch(r"blocks\.\d+\.attn\.[qkv]\.weight", k) for k in inside):
        return "soma"
    if "reg_token" in inside or any(k.endswith((".gamma_1", ".attn.q_bias")) for k in inside):
        return "timm"
    return "official"


def _split_qkv(stem: str, parts: dict[str, torch.Tensor], source: str
               ) -> tuple[dict[str, torch.Tensor], bool]:
    """q/k/v tensors of one fused ``qkv`` (official or timm) and whether a real k bias remains."""
    out: dict[str, torch.Tensor] = {}
    weight = parts.get("weight")
    if weight is None:
        raise ValueError(f"{source}: {stem}qkv has a bias but no weight")
    if weight.shape[0] % 3:
        raise ValueError(f"{source}: {stem}qkv.weight {tuple(weight.shape)} has no 3 equal parts")
    for name, w in zip("qkv", weight.chunk(3, dim=0)):
        out[f"attn.{name}.weight"] = w
    key_bias = False
    if "bias" in parts:
        bias = parts["bias"]
        if "bias_mask" in parts:
            bias = bias * parts["bias_mask"].to(bias.dtype)
        q, k, v = bias.chunk(3, dim=0)
        out["attn.q.bias"], out["attn.v.bias"] = q, v
        if k.abs().max() > 0:
            out["attn.k.bias"] = k
            key_bias = True
    return out, key_bias


def _rename(inside: Mapping[str, torch.Tensor], layout: str, source: str):
    """(ours, origin, ignored, unknown, periods, key_bias) of the prefix-stripped keys."""
    if layout == "soma":
        origin = {k: k for k in inside}
        return dict(inside), origin, [], [], None, any(".attn.k.bias" in k for k in inside)
    globals_map, block_re = keys.GLOBAL_KEYS[layout], keys.BLOCK_KEYS[layout]
    swiglu_blocks = {
        int(m.group("i")) for k in inside if (m := block_re.match(k))
        and m.group("rest").startswith(keys.SWIGLU_MARKERS)
    }
    out: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    ignored, unknown = [], []
    fused: dict[int, dict[str, torch.Tensor]] = {}
    periods = None
    for key, tensor in inside.items():
        if key in globals_map:
            out[globals_map[key]] = tensor
            origin[globals_map[key]] = key
            continue
        if key == "rope_embed.periods":
            periods = tensor
        if keys.IGNORED.match(key):
            ignored.append(key)
            continue
        match = block_re.match(key)
        if not match:
            unknown.append(key)
            continue
        index, rest = int(match.group("i")), match.group("rest")
        if rest.startswith("attn.qkv."):
            fused.setdefault(index, {})[rest[len("attn.qkv."):]] = tensor
            continue
        if rest == "attn.k_bias" and not tensor.abs().max() > 0:  # timm's zero k-bias buffer
            ignored.append(key)
            continue
        table = keys.FFN_KEYS[layout]["swiglu" if index in swiglu_blocks else "mlp"]
        module, _, param = rest.rpartition(".")
        if rest in table:
            ours = table[rest]
        elif module in table:
            ours = f"{table[module]}.{param}"
        else:
            unknown.append(key)
            continue
        out[f"blocks.{index}.{ours}"] = tensor
        origin[f"blocks.{index}.{ours}"] = key
    key_bias = False
    for index, parts in fused.items():
        stem = f"blocks.{index}.attn."
        split, has_k = _split_qkv(stem, parts, source)
        key_bias |= has_k
        for name, tensor in split.items():
            out[f"blocks.{index}.{name}"] = tensor
            origin[f"blocks.{index}.{name}"] = f"{stem}qkv.{name.rsplit('.', 1)[-1]}"
    return out, origin, ignored, unknown, periods, key_bias


def _rope_config(periods: torch.Tensor | None, embed_dim: int, source: str) -> dict:
    """Head count and RoPE schedule implied by the stored periods (official files only)."""
    if periods is None:
        heads = embed_dim // _HEAD_DIM if embed_dim % _HEAD_DIM == 0 else None
        return {"num_heads": heads} if heads else {}
    head_dim = 4 * periods.numel()
    stored = periods.float().flatten()
    config: dict = {"num_heads": embed_dim // head_dim}
    if torch.allclose(stored, rope_periods(head_dim, 100.0), rtol=1e-2):
        return config
    low, high = float(stored[0]), float(stored[-1])
    if torch.allclose(stored, rope_periods(head_dim, None, low, high), rtol=1e-2):
        return {**config, "rope_base": None, "rope_min_period": low, "rope_max_period": high}
    raise ValueError(
        f"{source}: rope_embed.periods {stored[:4].tolist()}... follow neither base 100 nor a "
        "min/max period ramp; this RoPE schedule is not supported"
    )


def infer_dinov3_config(state_dict: Mapping[str, torch.Tensor]) -> dict:
    """``DinoV3VisionTransformer`` kwargs implied by a state dict in our layout (no head count)."""
    missing = [k for k in ("cls_token", "patch_embed.proj.weight") if k not in state_dict]
    if missing:
        raise ValueError(f"cannot infer the DINOv3 ViT config: missing {missing}")
    embed_dim = int(state_dict["cls_token"].shape[-1])
    kernel = state_dict["patch_embed.proj.weight"]
    indices = {int(m.group(1)) for k in state_dict if (m := re.match(r"blocks\.(\d+)\.", k))}
    config: dict = dict(
        patch_size=int(kernel.shape[-1]),
        in_chans=int(kernel.shape[1]),
        embed_dim=embed_dim,
        depth=max(indices) + 1 if indices else 0,
        qkv_bias="blocks.0.attn.q.bias" in state_dict,
        key_bias="blocks.0.attn.k.bias" in state_dict,
        layer_scale_init=1e-5 if "blocks.0.ls1.gamma" in state_dict else None,
        num_register_tokens=int(state_dict["register_tokens"].shape[1])
        if "register_tokens" in state_dict else 0,
        ffn_layer="swiglu" if "blocks.0.mlp.w1.weight" in state_dict else "mlp",
    )
    down = state_dict.get("blocks.0.mlp.w3.weight", state_dict.get("blocks.0.mlp.fc2.weight"))
    if down is not None:
        config["ffn_hidden_dim"] = int(down.shape[1])
    return config


def convert_dinov3_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    patch_size: int | None = None,
    source: str = "<state dict>",
    patch_resample: str = "bicubic",
) -> Dinov3Conversion:
    """Convert a DINOv3 state dict of any layout to ours; see ``load_dinov3_weights``.

    The result's ``config`` holds the ``DinoV3VisionTransformer`` kwargs the weights imply
    (the head count from the stored RoPE periods, or head dim 64 for timm/HF files).
    """
    if not state_dict:
        raise ValueError(f"{source}: empty state dict; expected a DINOv3 ViT state dict")
    prefix, inside, outside = split_prefix(state_dict, source)
    if any(k in inside for k in _POS_KEYS):
        raise ValueError(
            f"{source}: has an absolute position embedding, so it is a DINOv2 checkpoint, not "
            "DINOv3; set MODEL.VIT.FAMILY 'dinov2' (or 'auto')"
        )
    layout = _detect(inside)
    dropped = [k for k in outside if keys.IGNORED.match(k.split(".", 1)[-1])]
    unknown = [k for k in outside if k not in dropped]
    out, origin, ignored, unknown_inside, periods, _ = _rename(inside, layout, source)
    dropped += [prefix + k for k in ignored]
    unknown += [prefix + k for k in unknown_inside]

    filled = []
    if "cls_token" in out and out["cls_token"].ndim == 2:
        out["cls_token"] = out["cls_token"].reshape(1, 1, -1)
    if "register_tokens" in out and out["register_tokens"].ndim == 2:
        out["register_tokens"] = out["register_tokens"].unsqueeze(0)
    if "mask_token" not in out and "cls_token" in out:
        out["mask_token"] = out["cls_token"].new_zeros(1, out["cls_token"].shape[-1])
        filled.append("mask_token")
    out["mask_token"] = out["mask_token"].reshape(1, -1)
    if "patch_embed.proj.weight" not in out:
        raise ValueError(
            f"{source}: not a DINOv3 ViT checkpoint in the {LAYOUTS[layout]} layout: missing "
            f"the patch embedding; unknown keys {unknown[:12]}"
        )
    old_patch = int(out["patch_embed.proj.weight"].shape[-1])
    new_patch = int(patch_size) if patch_size else old_patch
    if new_patch != old_patch:
        out["patch_embed.proj.weight"] = resample_patch_embed(
            out["patch_embed.proj.weight"], new_patch, mode=patch_resample
        )

    config = infer_dinov3_config(out)
    config.update(_rope_config(periods, config["embed_dim"], source))
    notes = ["RoPE periods checked against the file's"] if periods is not None else []
    expected = expected_dinov3_keys(config)
    unknown += [origin.get(k, k) for k in out if k not in expected]
    check_schema(out, expected, unknown, origin,
                 f"{source}: not a DINOv3 ViT checkpoint in the {LAYOUTS[layout]} layout "
                 f"(read with prefix {prefix!r})")
    return Dinov3Conversion(
        source=source,
        layout=layout,
        state_dict={k: out[k] for k in expected},
        config=config,
        prefix=prefix,
        dropped=dropped,
        filled=filled,
        patch_size=(old_patch, new_patch),
        notes=notes,
    )


def load_dinov3_weights(
    path: str | os.PathLike,
    patch_size: int | None = None,
    patch_resample: str = "bicubic",
) -> dict[str, torch.Tensor]:
    """Read DINOv3 weights of any public layout as a ``DinoV3VisionTransformer`` state dict.

    The layout is detected from the keys (official, timm, HF ``DINOv3ViTModel`` with or without
    the ``model.`` encoder prefix, or a file this project already converted); fused ``qkv`` is
    split with the official k-bias mask applied; a missing mask token is zero-filled; heads are
    ignored. ``patch_size`` resamples the patch kernel. Unknown or missing keys raise a ValueError
    naming the file and keys.
    """
    state_dict, _ = read_weight_file(path)
    conversion = convert_dinov3_state_dict(
        state_dict, patch_size=patch_size, source=os.fspath(path), patch_resample=patch_resample
    )
    return conversion.state_dict
