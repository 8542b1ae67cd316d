"""Key map of the official DINOv2 checkpoints and of timm's ``vit_*_patch14*_dinov2`` ports.

Both use ``blocks.<i>.`` (official chunked checkpoints ``blocks.<chunk>.<i>.``), a fused
``attn.qkv`` that the loader splits into q, k and v, and SwiGLU's ``w12``/``w3``; timm calls the
register tokens ``reg_token``. Our own converted files use the same names, already split.
"""
from __future__ import annotations

import re

__all__ = ["BLOCK_KEY", "BLOCK_RENAMES", "GLOBAL_RENAMES"]

GLOBAL_RENAMES = {
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
BLOCK_RENAMES = {
    "norm1": "norm1", "norm2": "norm2", "ls1.gamma": "ls1.gamma", "ls2.gamma": "ls2.gamma",
    "attn.q": "attn.q", "attn.k": "attn.k", "attn.v": "attn.v", "attn.proj": "attn.proj",
    "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2", "mlp.w12": "mlp.fc1", "mlp.w3": "mlp.fc2",
}
BLOCK_KEY = re.compile(r"^blocks\.(?:\d+\.)?(?P<i>\d+)\.(?P<rest>.+)$")
