"""Our ViT's state dict written in the official DINOv2 checkpoint layout (fused ``attn.qkv``).

The project loads foundation weights through `load_dinov2_weights`, which reads the layouts that
circulate publicly; writing the pretrained model in the official layout means the demo exercises
exactly the path a real ``dinov2_vit*14_pretrain.pth`` takes (layout detection, q/k/v split).
"""
from __future__ import annotations

import re
from collections.abc import Mapping

import torch

__all__ = ["to_official_state_dict"]

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
