"""Our ViT's state dict written in the official DINOv2 checkpoint layout (fused ``attn.qkv``).

The project loads foundation weights through `load_dinov2_weights`, which reads the layouts that
circulate publicly; writing the pretrained model in the official layout means the demo exercises
exactly the path a real ``dinov2_vit*14_pretrain.pth`` takes (layout detection, q/k/v split).
"""
from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from ..layers.vit_tensors import rope_periods

__all__ = ["to_official_dinov3_state_dict", "to_official_state_dict"]

_QKV = re.compile(r"^(blocks\.\d+\.attn\.)([qkv])\.(weight|bias)$")


def to_official_state_dict(
    state_dict: Mapping[str, torch.Tensor], dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor]:
    """Fuse each block's q, k, v linears into ``attn.qkv`` (rows q, k, v) and cast to `dtype`."""
    out: dict[str, torch.Tensor] = {}
    parts: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, tensor in state_dict.items():
        match = _QKV.match(key)
        if match:
            parts.setdefault((match.group(1), match.group(3)), {})[match.group(2)] = tensor
        else:
            out[key] = tensor.detach().to(dtype).clone()
    for (stem, param), qkv in parts.items():
        if set(qkv) != {"q", "k", "v"}:
            raise ValueError(f"{stem}{{q,k,v}}.{param}: found only {sorted(qkv)}")
        fused = torch.cat([qkv["q"], qkv["k"], qkv["v"]], dim=0)
        out[f"{stem}qkv.{param}"] = fused.detach().to(dtype).clone()
    if "mask_token" in out:
        out["mask_token"] = out["mask_token"].reshape(1, -1)
    return out


def to_official_dinov3_state_dict(
    state_dict: Mapping[str, torch.Tensor], num_heads: int, dtype: torch.dtype = torch.float32,
    rope_base: float = 100.0,
) -> dict[str, torch.Tensor]:
    """Our DINOv3 ViT's state dict in the official DINOv3 layout: fused ``attn.qkv`` with a
    ``bias_mask`` that zeroes the k bias (``LinearKMaskedBias``; a zero k bias is written when the
    model has none), ``storage_tokens``, and the ``rope_embed.periods`` of ``rope_base`` (which need ``num_heads``)."""
    plain = {k: v for k, v in state_dict.items() if not k.endswith("attn.k.bias")}
    k_bias = {k: v for k, v in state_dict.items() if k.endswith("attn.k.bias")}
    out = to_official_state_dict(
        {k: v for k, v in plain.items() if not k.endswith(("attn.q.bias", "attn.v.bias"))}, dtype)
    blocks = sorted({int(k.split(".")[1]) for k in plain if k.startswith("blocks.")})
    for i in blocks:
        stem = f"blocks.{i}.attn."
        if f"{stem}q.bias" not in plain:
            continue
        q, v = plain[f"{stem}q.bias"], plain[f"{stem}v.bias"]
        k = k_bias.get(f"{stem}k.bias", torch.zeros_like(q))
        out[f"{stem}qkv.bias"] = torch.cat([q, k, v]).detach().to(dtype).clone()
        mask = [torch.ones_like(q), torch.full_like(k, float(f"{stem}k.bias" in k_bias)),
                torch.ones_like(v)]
        out[f"{stem}qkv.bias_mask"] = torch.cat(mask).to(dtype)
    if "register_tokens" in out:
        out["storage_tokens"] = out.pop("register_tokens")
    head_dim = out["blocks.0.attn.qkv.weight"].shape[1] // int(num_heads)
    out["rope_embed.periods"] = rope_periods(head_dim, rope_base).to(dtype)
    return out
