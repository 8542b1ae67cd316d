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
from dataclasses import dataclass, field

import torch

from .dinov2_tensors import (
    interpolate_pos_embed,
    resample_patch_embed,
    swiglu_hidden_features,
    to_2tuple,
)
from .safe_load import torch_load_weights

__all__ = [
    "LAYOUTS",
    "Dinov2Conversion",
    "convert_dinov2_state_dict",
    "detect_dinov2_layout",
    "expected_vit_keys",
    "infer_vit_config",
    "load_dinov2_weights",
    "read_weight_file",
    "source_interpolation",
]

LAYOUTS = {
    "official": "official DINOv2 (dinov2_vit*14*_pretrain.pth)",
    "timm": "timm vit_*_patch14*_dinov2",
    "hf": "HF transformers Dinov2Model",
    "soma": "soma-d2 (already converted)",
}

# Standard DINOv2 widths -> heads; the head count is not stored in a state dict.
_HEADS_BY_DIM = {384: 6, 768: 12, 1024: 16, 1536: 24}
_WRAPPER_KEYS = ("state_dict", "model", "teacher", "module", "model_state_dict")
_HEAD_KEY = re.compile(r"^(head|classifier|fc_norm|dino_head|ibot_head)\.")
_EXPECTATION = (
    "expected a DINOv2 ViT state dict: 'cls_token', 'pos_embed', 'blocks.N.attn.qkv.weight', "
    "'blocks.N.ls1.gamma' (official/timm) or 'embeddings.cls_token', "
    "'encoder.layer.N.attention...' (HF Dinov2Model)"
)


@dataclass
class Dinov2Conversion:
    """A converted state dict plus what was detected and changed, for logs and tools."""

    source: str
    layout: str
    state_dict: dict[str, torch.Tensor]
    config: dict
    prefix: str = ""
    dropped: list[str] = field(default_factory=list)
    filled: list[str] = field(default_factory=list)
    patch_size: tuple[int, int] = (0, 0)
    pos_grid: tuple[tuple[int, int], tuple[int, int]] = ((0, 0), (0, 0))
    patch_resample: str = "bicubic"

    def summary(self) -> str:
        """One line: layout, size, and any resampling / dropped / filled keys."""
        cfg = self.config
        parts = [
            f"{self.source}: {LAYOUTS[self.layout]} layout"
            + (f" (prefix {self.prefix!r})" if self.prefix else ""),
            f"embed_dim {cfg['embed_dim']}, depth {cfg['depth']}, "
            f"{cfg['num_register_tokens']} registers, ffn {cfg['ffn_layer']}",
            f"{len(self.state_dict)} tensors",
        ]
        old_p, new_p = self.patch_size
        if old_p != new_p:
            parts.append(f"patch {old_p} -> {new_p} ({self.patch_resample})")
        old_g, new_g = self.pos_grid
        if old_g != new_g:
            parts.append(f"pos grid {old_g[0]}x{old_g[1]} -> {new_g[0]}x{new_g[1]}")
        if self.dropped:
            parts.append(f"ignored {len(self.dropped)} head keys")
        if self.filled:
            parts.append(f"zero-filled {self.filled}")
        return "; ".join(parts)


def read_weight_file(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a ``.pth/.pt/.bin`` (torch.load, weights_only) or ``.safetensors`` file.

    Returns the tensor mapping and the ``meta`` dict that ``tools/convert_dinov2.py`` stores next
    to it (empty for other files). Wrappers such as ``{"model": ...}``, ``{"state_dict": ...}``
    or ``{"teacher": ...}`` are unwrapped.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"DINOv2 weight file {path!r} does not exist")
    suffix = os.path.splitext(path)[1].lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path, device="cpu"), {}
    if suffix not in (".pth", ".pt", ".bin", ".ckpt"):
        raise ValueError(
            f"{path}: unsupported weight file type {suffix or '(no suffix)'!r}; expected a "
            "torch.save file (.pth, .pt, .bin, .ckpt) or .safetensors"
        )
    return _unwrap(torch_load_weights(path), path)


def _unwrap(obj: object, source: str) -> tuple[dict[str, torch.Tensor], dict]:
    meta: dict = {}
    for _ in range(len(_WRAPPER_KEYS) + 1):
        if not isinstance(obj, Mapping):
            raise ValueError(
                f"{source}: expected a state dict (names -> tensors), found {type(obj).__name__}"
            )
        if isinstance(obj.get("meta"), Mapping):
            meta = dict(obj["meta"])
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return dict(obj), meta
        inner = next((k for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            odd = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
            raise ValueError(
                f"{source}: holds non-tensor entries {odd[:8]} and none of the wrapper entries "
                f"{list(_WRAPPER_KEYS)}; {_EXPECTATION}"
            )
        obj = obj[inner]
    raise ValueError(f"{source}: wrappers nested too deeply to find a state dict")


def _split_prefix(
    state_dict: Mapping[str, torch.Tensor], source: str
) -> tuple[str, dict[str, torch.Tensor], list[str]]:
    """Strip the model prefix (``dinov2.``, ``backbone.``, ``module.``...) found at the class token."""
    anchors = [k for k in state_dict if k == "cls_token" or k.endswith(".cls_token")]
    if len(anchors) > 1:
        teacher = [k for k in anchors if k.startswith("teacher.")]
        anchors = teacher if len(teacher) == 1 else anchors
    if not anchors:
        sample = list(state_dict)[:6]
        raise ValueError(
            f"{source}: not a DINOv2 ViT checkpoint, it has no class token ({_EXPECTATION}); "
            f"its first keys are {sample}"
        )
    if len(anchors) > 1:
        raise ValueError(f"{source}: several models in one file (class tokens {anchors}); "
                         "extract one state dict first")
    prefix = anchors[0][: -len("cls_token")]
    if prefix == "embeddings." or prefix.endswith(".embeddings."):
        prefix = prefix[: -len("embeddings.")]
    inside = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    outside = [k for k in state_dict if not k.startswith(prefix)]
    return prefix, inside, outside


def detect_dinov2_layout(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Name the layout of a DINOv2 state dict: ``official``, ``timm``, ``hf`` or ``soma``."""
    _, inside, _ = _split_prefix(state_dict, "<state dict>")
    return _detect(inside)


def _detect(keys: Mapping[str, torch.Tensor]) -> str:
    if any(k.startswith(("embeddings.", "encoder.layer.")) for k in keys):
        return "hf"
    if any(re.fullmatch(r"blocks\.\d+(?:\.\d+)?\.attn\.[qkv]\.weight", k) for k in keys):
        return "soma"
    if "reg_token" in keys or "mask_token" not in keys:
        return "timm"
    return "official"


_GLOBAL_RENAMES = {
    "cls_token": "cls_token",
    "mask_token": "mask_token",
    "register_tokens": "register_tokens",
    "reg_token": "register_tokens",
    "pos_embed": "pos_embed",
    "patch_embed.proj.weight": "patch_embed.proj.weight",
    "patch_embed.proj.bias": "patch_embed.proj.bias",
    "norm.weight": "norm.weight",
    "norm.bias": "norm.bias",
}
_BLOCK_RENAMES = {
    "norm1": "norm1", "norm2": "norm2", "ls1.gamma": "ls1.gamma", "ls2.gamma": "ls2.gamma",
    "attn.q": "attn.q", "attn.k": "attn.k", "attn.v": "attn.v", "attn.proj": "attn.proj",
    "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2", "mlp.w12": "mlp.fc1", "mlp.w3": "mlp.fc2",
}
_HF_GLOBAL_RENAMES = {
    "embeddings.cls_token": "cls_token",
    "embeddings.mask_token": "mask_token",
    "embeddings.register_tokens": "register_tokens",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}
_HF_BLOCK_RENAMES = {
    "norm1": "norm1", "norm2": "norm2",
    "attention.attention.query": "attn.q", "attention.attention.key": "attn.k",
    "attention.attention.value": "attn.v", "attention.output.dense": "attn.proj",
    "attention.q_proj": "attn.q", "attention.k_proj": "attn.k", "attention.v_proj": "attn.v",
    "attention.o_proj": "attn.proj",
    "layer_scale1.lambda1": "ls1.gamma", "layer_scale2.lambda1": "ls2.gamma",
    "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
    "mlp.weights_in": "mlp.fc1", "mlp.weights_out": "mlp.fc2", "mlp.down_proj": "mlp.fc2",
}
_BLOCK_KEY = re.compile(r"^blocks\.(?:\d+\.)?(?P<i>\d+)\.(?P<rest>.+)$")
_HF_BLOCK_KEY = re.compile(r"^encoder\.layer\.(?P<i>\d+)\.(?P<rest>.+)$")


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
    globals_, block_re, block_renames = (
        (_HF_GLOBAL_RENAMES, _HF_BLOCK_KEY, _HF_BLOCK_RENAMES)
        if hf
        else (_GLOBAL_RENAMES, _BLOCK_KEY, _BLOCK_RENAMES)
    )

    def put(name: str, tensor: torch.Tensor, src: str) -> None:
        if name in out:
            raise ValueError(
                f"{source}: keys {origin[name]!r} and {src!r} both map to {name!r}; "
                "the file mixes layouts"
            )
        out[name] = tensor
        origin[name] = src

    for key, tensor in inside.items():
        if _HEAD_KEY.match(key):
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
            for part, chunk in zip("qkv", tensor.chunk(3, dim=0)):
                put(f"{stem}attn.{part}.{param}", chunk.clone(), key)
        elif hf and module in ("mlp.gate_proj", "mlp.up_proj"):
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
    indices = {int(m.group("i")) for k in state_dict if (m := _BLOCK_KEY.match(k))}
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


def expected_vit_keys(config: Mapping) -> dict[str, tuple[int, ...]]:
    """Names and shapes of ``DinoVisionTransformer(**config).state_dict()``, without building it."""
    dim = int(config["embed_dim"])
    patch = int(config.get("patch_size", 14))
    grid_h, grid_w = (math.ceil(s / patch) for s in to_2tuple(config.get("img_size", 518)))
    in_chans = int(config.get("in_chans", 3))
    registers = int(config.get("num_register_tokens", 0))
    swiglu = config.get("ffn_layer", "mlp") == "swiglu"
    if config.get("ffn_hidden_dim") is not None:
        hidden = int(config["ffn_hidden_dim"])
    elif swiglu:
        hidden = swiglu_hidden_features(dim, float(config.get("mlp_ratio", 4.0)))
    else:
        hidden = int(dim * float(config.get("mlp_ratio", 4.0)))
    keys: dict[str, tuple[int, ...]] = {
        "cls_token": (1, 1, dim),
        "pos_embed": (1, 1 + grid_h * grid_w, dim),
        "mask_token": (1, dim),
        "patch_embed.proj.weight": (dim, in_chans, patch, patch),
        "patch_embed.proj.bias": (dim,),
        "norm.weight": (dim,),
        "norm.bias": (dim,),
    }
    if registers:
        keys["register_tokens"] = (1, registers, dim)
    layer_scale = config.get("layer_scale_init", 1e-5)
    for i in range(int(config.get("depth", 12))):
        b = f"blocks.{i}."
        for name in ("norm1", "norm2"):
            keys[f"{b}{name}.weight"] = keys[f"{b}{name}.bias"] = (dim,)
        for name in ("q", "k", "v"):
            keys[f"{b}attn.{name}.weight"] = (dim, dim)
            if config.get("qkv_bias", True):
                keys[f"{b}attn.{name}.bias"] = (dim,)
        keys[f"{b}attn.proj.weight"], keys[f"{b}attn.proj.bias"] = (dim, dim), (dim,)
        if layer_scale:
            keys[f"{b}ls1.gamma"] = keys[f"{b}ls2.gamma"] = (dim,)
        fc1_out = 2 * hidden if swiglu else hidden
        keys[f"{b}mlp.fc1.weight"], keys[f"{b}mlp.fc1.bias"] = (fc1_out, dim), (fc1_out,)
        keys[f"{b}mlp.fc2.weight"], keys[f"{b}mlp.fc2.bias"] = (dim, hidden), (dim,)
    return keys


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
        raise ValueError(f"{source}: empty state dict; {_EXPECTATION}")
    prefix, inside, outside = _split_prefix(state_dict, source)
    layout = _detect(inside)
    dropped = [k for k in outside if _HEAD_KEY.match(k.split(".", 1)[-1]) or _HEAD_KEY.match(k)]
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
    missing = [k for k in expected if k not in out]
    unknown += [origin[k] for k in out if k not in expected]
    wrong = [
        f"{origin.get(k, k)} {tuple(out[k].shape)} (expected {shape})"
        for k, shape in expected.items()
        if k in out and tuple(out[k].shape) != shape
    ]
    if missing or unknown or wrong:
        problems = []
        if unknown:
            problems.append(f"unknown keys {unknown[:12]}" + (" ..." if len(unknown) > 12 else ""))
        if missing:
            problems.append(f"missing keys {missing[:12]}" + (" ..." if len(missing) > 12 else ""))
        if wrong:
            problems.append(f"wrong shapes {wrong[:6]}")
        raise ValueError(
            f"{source}: not a DINOv2 ViT checkpoint in the {LAYOUTS[layout]} layout "
            f"(read with prefix {prefix!r}): " + "; ".join(problems)
        )
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
