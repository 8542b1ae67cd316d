"""Load DINOv2 weights from any public layout into the layout of ``DinoVisionTransformer``.

DINOv2 weights circulate in three layouts: the official ``dinov2_vit*14*_pretrain.pth`` (fused
``qkv``, ``w12``/``w3`` for SwiGLU, sometimes chunked ``blocks.<chunk>.<i>``), timm's
``vit_*_patch14*_dinov2`` (``reg_token``, no mask token, and for register models a position
embedding without the class position, whose value timm folded into ``cls_token``) and HF
transformers' ``Dinov2Model`` (old ``attention.attention.query`` and new ``q_proj`` names). The
SoMA backbone needs q, k and v as separate linears, so every layout is renamed and split here,
the patch kernel is resampled when the patch size changes and the position embedding is
resampled when a training image size is given. Anything that does not map is reported by name
instead of being silently dropped; only classification/self-supervision heads are ignored.
"""
from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from ...layers.vit_tensors import (
    interpolate_pos_embed,
    resample_patch_embed,
    swiglu_hidden_features,
    to_2tuple,
)
from ..conversion import ViTConversion, check_schema
from . import hf_keys, official_keys
from .vit_schema import expected_vit_keys
from .weight_file import EXPECTATION, HEAD_KEY, read_weight_file, split_prefix

LAYOUTS = {
    "official": "official DINOv2 (dinov2_vit*14*_pretrain.pth)",
    "timm": "timm vit_*_patch14*_dinov2",
    "hf": "HF transformers Dinov2Model",
    "soma": "soma-d2 (already converted)",
}

# Standard DINOv2 widths -> heads; the head count is not stored in a state dict.
_HEADS_BY_DIM = {384: 6, 768: 12, 1024: 16, 1536: 24}


@dataclass
class Dinov2Conversion(ViTConversion):
    """A converted state dict plus what was detected and changed, for logs and tools."""

    pos_grid: tuple[tuple[int, int], tuple[int, int]] = ((0, 0), (0, 0))
    patch_resample: str = "bicubic"

    def summary(self) -> str:
        """One line: layout, size, and any resampling / dropped / filled keys."""
        old_g, new_g = self.pos_grid
        grid = ((f"pos grid {old_g[0]}x{old_g[1]} -> {new_g[0]}x{new_g[1]}",)
                if old_g != new_g else ())
        return "; ".join(self._summary_parts(LAYOUTS, "registers", f" ({self.patch_resample})",
                                             grid, "head keys"))


def detect_dinov2_layout(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Name the layout of a DINOv2 state dict: ``official``, ``timm``, ``hf`` or ``soma``."""
    _, inside, _ = split_prefix(state_dict, "<state dict>")
    return _detect(inside)


def _detect(keys: Mapping[str, torch.Tensor]) -> str:
    if any(k.startswith(("embeddings.", "encoder.layer.")) for k in keys):
        return "hf"
    if any(re.fullmatch(r"blocks\.\d+(?:\.\d+)?\.attn\.[qkv]\.weight", k) for k in keys):
        return "soma"
    if "reg_token" in keys or "mask_token" not in keys:
        return "timm"
    return "official"


def _rename(
    inside: Mapping[str, torch.Tensor], layout: str, source: str
) -> tuple[dict[str, torch.Tensor], dict[str, str], list[str], list[str]]:
    """Map source keys to ours; returns (tensors, our->source names, dropped heads, unknown)."""
    out: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    dropped: list[str] = []
    unknown: list[str] = []
    swiglu_parts: dict[tuple[str, str], dict[str, tuple[str, torch.Tensor]]] = {}
    hf = layout == "hf"
    key_map = hf_keys if hf else official_keys
    globals_, block_re, block_renames = (
        key_map.GLOBAL_RENAMES, key_map.BLOCK_KEY, key_map.BLOCK_RENAMES)

    def put(name: str, tensor: torch.Tensor, src: str) -> None:
        if name in out:
            raise ValueError(
                f"{source}: keys {origin[name]!r} and {src!r} both map to {name!r}; "
                "the file mixes layouts"
            )
        out[name] = tensor
        origin[name] = src

    for key, tensor in inside.items():
        if HEAD_KEY.match(key):
            dropped.append(key)
            continue
        if key in globals_:
            put(globals_[key], tensor, key)
            continue
        match = block_re.match(key)
        if match is None:
            unknown.append(key)
            continue
        index, rest = match.group("i"), match.group("rest")
        module, _, param = rest.rpartition(".")
        stem = f"blocks.{index}."
        if module == "attn.qkv" and not hf:
            if tensor.shape[0] % 3:
                raise ValueError(
                    f"{source}: {key!r} has {tensor.shape[0]} rows, not divisible by 3 (q, k, v)"
                )
            # row blocks of the fused tensor: contiguous views, no copy (nothing writes to them
            # in place; a copy of a mapped file is made by the kernel only if something does)
            for part, chunk in zip("qkv", tensor.chunk(3, dim=0)):
                put(f"{stem}attn.{part}.{param}", chunk, key)
        elif hf and module in hf_keys.SWIGLU_PARTS:
            swiglu_parts.setdefault((index, param), {})[module] = (key, tensor)
        elif module in block_renames and param in ("weight", "bias"):
            put(f"{stem}{block_renames[module]}.{param}", tensor, key)
        elif rest in block_renames:
            put(f"{stem}{block_renames[rest]}", tensor, key)
        else:
            unknown.append(key)
    for (index, param), parts in sorted(swiglu_parts.items()):
        if len(parts) != 2:
            (present,) = parts.values()
            raise ValueError(
                f"{source}: {present[0]!r} has no matching "
                f"{'mlp.up_proj' if 'mlp.gate_proj' in parts else 'mlp.gate_proj'} partner; "
                "a SwiGLU FFN needs both"
            )
        gate_key, gate = parts["mlp.gate_proj"]
        _, up = parts["mlp.up_proj"]
        put(f"blocks.{index}.mlp.fc1.{param}", torch.cat([gate, up], dim=0), gate_key)
    return out, origin, dropped, unknown


def _grid_of_pos_embed(
    pos_embed: torch.Tensor, layout: str, meta: Mapping, source: str
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Return the pos-embed with a class position (added as zeros if absent) and its grid."""
    if pos_embed.ndim == 2:
        pos_embed = pos_embed.unsqueeze(0)
    positions = pos_embed.shape[1]
    if meta.get("pos_grid") is not None:
        grid = to_2tuple(meta["pos_grid"], "meta pos_grid")
        if 1 + grid[0] * grid[1] == positions:
            return pos_embed, grid
    side = math.isqrt(positions - 1)
    if side * side == positions - 1:
        return pos_embed, (side, side)
    side = math.isqrt(positions)
    if side * side == positions and layout in ("timm", "soma"):
        # timm register models keep no class position (no_embed_class); its value is in cls_token.
        zeros = pos_embed.new_zeros(1, 1, pos_embed.shape[-1])
        return torch.cat([zeros, pos_embed], dim=1), (side, side)
    raise ValueError(
        f"{source}: pos_embed has {positions} positions, which is neither 1 + a square grid nor "
        "a square grid; a non-square grid can only be read from a file written by "
        "tools/convert_dinov2.py (which records it)"
    )


def source_interpolation(layout: str, num_register_tokens: int = 0) -> dict:
    """Position-embedding resampling convention of the implementation a layout comes from.

    With these ``DinoVisionTransformer`` kwargs, inputs of any size give the same tokens as that
    implementation: official DINOv2 hub models use offset 0.1 without antialias (their register
    models offset 0 with antialias), timm resamples by size with antialias, HF ``Dinov2Model`` by
    size without antialias (``Dinov2WithRegistersModel`` with antialias).
    """
    if layout == "official" and not num_register_tokens:
        return dict(interpolate_offset=0.1, interpolate_antialias=False)
    if layout == "hf" and not num_register_tokens:
        return dict(interpolate_offset=0.0, interpolate_antialias=False)
    if layout not in ("official", "hf", "timm"):
        return {}
    return dict(interpolate_offset=0.0, interpolate_antialias=True)


def infer_vit_config(
    state_dict: Mapping[str, torch.Tensor], pos_grid: Sequence[int] | None = None
) -> dict:
    """``DinoVisionTransformer`` kwargs recoverable from a state dict in OUR layout.

    The head count is not stored in weights: it is filled in for the four DINOv2 widths
    (384/768/1024/1536 -> 6/12/16/24) and left out otherwise. ``img_size`` is the stored grid
    times the patch size; ``layer_scale_init`` is a placeholder (the loaded ``gamma`` wins).
    """
    missing = [k for k in ("cls_token", "pos_embed", "patch_embed.proj.weight") if k not in
               state_dict]
    if missing:
        raise ValueError(f"cannot infer the ViT config: missing {missing}")
    embed_dim = int(state_dict["cls_token"].shape[-1])
    kernel = state_dict["patch_embed.proj.weight"]
    patch = int(kernel.shape[-1])
    if pos_grid is None:
        side = math.isqrt(state_dict["pos_embed"].shape[1] - 1)
        pos_grid = (side, side)
    grid = to_2tuple(pos_grid, "pos_grid")
    indices = {int(m.group("i")) for k in state_dict if (m := official_keys.BLOCK_KEY.match(k))}
    depth = max(indices) + 1 if indices else 0
    config: dict = dict(
        img_size=(grid[0] * patch, grid[1] * patch) if grid[0] != grid[1] else grid[0] * patch,
        patch_size=patch,
        in_chans=int(kernel.shape[1]),
        embed_dim=embed_dim,
        depth=depth,
        qkv_bias="blocks.0.attn.q.bias" in state_dict,
        layer_scale_init=1e-5 if "blocks.0.ls1.gamma" in state_dict else None,
        num_register_tokens=int(state_dict["register_tokens"].shape[1])
        if "register_tokens" in state_dict else 0,
        ffn_layer="mlp",
    )
    if embed_dim in _HEADS_BY_DIM:
        config["num_heads"] = _HEADS_BY_DIM[embed_dim]
    fc1, fc2 = state_dict.get("blocks.0.mlp.fc1.weight"), state_dict.get("blocks.0.mlp.fc2.weight")
    if fc1 is not None and fc2 is not None:
        hidden = int(fc2.shape[1])
        swiglu = fc1.shape[0] == 2 * hidden
        config["ffn_layer"] = "swiglu" if swiglu else "mlp"
        ratio_hidden = swiglu_hidden_features(embed_dim, 4.0) if swiglu else 4 * embed_dim
        if hidden == ratio_hidden:
            config["mlp_ratio"] = 4.0
        else:
            config["ffn_hidden_dim"] = hidden
    return config


def convert_dinov2_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    patch_size: int | None = None,
    image_size: int | Sequence[int] | None = None,
    source: str = "<state dict>",
    meta: Mapping | None = None,
    patch_resample: str = "bicubic",
) -> Dinov2Conversion:
    """Convert a DINOv2 state dict of any layout to ours; see ``load_dinov2_weights``.

    The result's ``config`` holds the ``DinoVisionTransformer`` kwargs the weights imply,
    including the source implementation's pos-embed resampling convention
    (``source_interpolation``) and, for the four DINOv2 widths, the head count.
    """
    meta = meta or {}
    if not state_dict:
        raise ValueError(f"{source}: empty state dict; {EXPECTATION}")
    prefix, inside, outside = split_prefix(state_dict, source)
    layout = _detect(inside)
    dropped = [k for k in outside if HEAD_KEY.match(k.split(".", 1)[-1]) or HEAD_KEY.match(k)]
    stray = [k for k in outside if k not in dropped]
    out, origin, head_keys, unknown = _rename(inside, layout, source)
    dropped += [prefix + k for k in head_keys]
    unknown = stray + [prefix + k for k in unknown]

    filled = []
    if "mask_token" not in out and "cls_token" in out:
        out["mask_token"] = out["cls_token"].new_zeros(1, out["cls_token"].shape[-1])
        filled.append("mask_token")
    if "mask_token" in out and out["mask_token"].ndim != 2:
        out["mask_token"] = out["mask_token"].reshape(1, -1)
    if "cls_token" in out and out["cls_token"].ndim == 2:
        out["cls_token"] = out["cls_token"].reshape(1, 1, -1)
    if "register_tokens" in out and out["register_tokens"].ndim == 2:
        out["register_tokens"] = out["register_tokens"].unsqueeze(0)

    if "pos_embed" not in out or "patch_embed.proj.weight" not in out:
        lacking = [k for k in ("pos_embed", "patch_embed.proj.weight") if k not in out]
        raise ValueError(
            f"{source}: not a DINOv2 ViT checkpoint in the {LAYOUTS[layout]} layout: missing "
            f"{lacking}; unknown keys {unknown[:12]}"
        )
    pos_embed, old_grid = _grid_of_pos_embed(out["pos_embed"], layout, meta, source)
    old_patch = int(out["patch_embed.proj.weight"].shape[-1])
    new_patch = int(patch_size) if patch_size else old_patch
    if new_patch != old_patch:
        out["patch_embed.proj.weight"] = resample_patch_embed(
            out["patch_embed.proj.weight"], new_patch, mode=patch_resample
        )
    new_grid = old_grid
    if image_size is not None:
        new_grid = tuple(math.ceil(s / new_patch) for s in to_2tuple(image_size, "image_size"))
        pos_embed = interpolate_pos_embed(pos_embed, new_grid, 1, old_grid=old_grid)
    out["pos_embed"] = pos_embed

    config = infer_vit_config(out, pos_grid=new_grid)
    config["layer_scale_init"] = 1e-5  # DINOv2 blocks always carry layer-scale
    origin_layout = meta.get("source_layout", layout) if layout == "soma" else layout
    config.update(source_interpolation(str(origin_layout), config["num_register_tokens"]))
    expected = expected_vit_keys(config)
    unknown += [origin[k] for k in out if k not in expected]
    check_schema(out, expected, unknown, origin,
                 f"{source}: not a DINOv2 ViT checkpoint in the {LAYOUTS[layout]} layout "
                 f"(read with prefix {prefix!r})")
    ordered = {k: out[k] for k in expected if k in out}
    return Dinov2Conversion(
        source=source,
        layout=layout,
        state_dict=ordered,
        config=config,
        prefix=prefix,
        dropped=dropped,
        filled=filled,
        patch_size=(old_patch, new_patch),
        pos_grid=(old_grid, new_grid),
        patch_resample=patch_resample,
    )


def load_dinov2_weights(
    path: str | os.PathLike,
    patch_size: int | None = None,
    image_size: int | Sequence[int] | None = None,
    patch_resample: str = "bicubic",
) -> dict[str, torch.Tensor]:
    """Read DINOv2 weights of any public layout as a ``DinoVisionTransformer`` state dict.

    The layout is detected from the keys (official, timm, HF ``Dinov2Model`` old or new names,
    or a file this project already converted); fused ``qkv`` is split; a missing mask token is
    zero-filled (its DINOv2 initialisation); classification heads are ignored. ``patch_size``
    resamples the patch kernel (``patch_resample``: "bicubic" as the official recipe, or
    "flexi" for FlexiViT's pseudo-inverse); ``image_size`` (int or (H, W)) resamples the position
    embedding to the grid ``ceil(size / patch)`` with plain bicubic interpolation (the official
    SoMA converter's choice). Unknown or missing keys raise a ValueError naming the file and keys.
    """
    state_dict, meta = read_weight_file(path)
    conversion = convert_dinov2_state_dict(
        state_dict,
        patch_size=patch_size,
        image_size=image_size,
        source=os.fspath(path),
        meta=meta,
        patch_resample=patch_resample,
    )
    return conversion.state_dict
