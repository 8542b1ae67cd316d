"""Key maps of the three public DINOv3 layouts onto ``DinoV3VisionTransformer``'s names.

Official (facebookresearch/dinov3 ``dinov3_vit*16_pretrain_*.pth``): ``storage_tokens``, fused
``attn.qkv`` with a ``bias_mask`` that zeroes the k bias, ``ls1.gamma``, MLP ``fc1``/``fc2`` or
SwiGLU ``w1``/``w2``/``w3``, a stored ``rope_embed.periods``. timm (``vit_*_patch16_dinov3``):
``reg_token``, fused ``qkv`` with ``q_bias``/``v_bias`` (``_qkvb`` variants), ``gamma_1``,
SwiGLU ``fc1_g``/``fc1_x``/``fc2``. HF transformers (``DINOv3ViTModel``): ``embeddings.*``,
``[model.]layer.N.attention.{q,k,v,o}_proj``, ``layer_scale1.lambda1``, MLP ``up_proj``/
``down_proj`` or gated ``gate_proj``/``up_proj``/``down_proj``. Entries that depend on whether the
block is SwiGLU (timm's ``fc2``, HF's ``up_proj``/``down_proj``) are listed per FFN kind.
"""
from __future__ import annotations

import re

__all__ = ["BLOCK_KEYS", "FFN_KEYS", "GLOBAL_KEYS", "IGNORED", "SWIGLU_MARKERS"]

# layout -> {source global key: our key}
GLOBAL_KEYS: dict[str, dict[str, str]] = {
    "official": {
        "cls_token": "cls_token", "storage_tokens": "register_tokens",
        "mask_token": "mask_token", "patch_embed.proj.weight": "patch_embed.proj.weight",
        "patch_embed.proj.bias": "patch_embed.proj.bias", "norm.weight": "norm.weight",
        "norm.bias": "norm.bias",
    },
    "timm": {
        "cls_token": "cls_token", "reg_token": "register_tokens",
        "patch_embed.proj.weight": "patch_embed.proj.weight",
        "patch_embed.proj.bias": "patch_embed.proj.bias", "norm.weight": "norm.weight",
        "norm.bias": "norm.bias",
    },
    "hf": {
        "embeddings.cls_token": "cls_token", "embeddings.register_tokens": "register_tokens",
        "embeddings.mask_token": "mask_token",
        "embeddings.patch_embeddings.weight": "patch_embed.proj.weight",
        "embeddings.patch_embeddings.bias": "patch_embed.proj.bias",
        "norm.weight": "norm.weight", "norm.bias": "norm.bias",
    },
    "soma": {},  # identity, see convert._rename
}

# layout -> regex of a block key with groups i (block index) and rest
BLOCK_KEYS: dict[str, re.Pattern] = {
    "official": re.compile(r"^blocks\.(?:\d+\.)?(?P<i>\d+)\.(?P<rest>.+)$"),
    "timm": re.compile(r"^blocks\.(?P<i>\d+)\.(?P<rest>.+)$"),
    "hf": re.compile(r"^(?:model\.)?layer\.(?P<i>\d+)\.(?P<rest>.+)$"),
    "soma": re.compile(r"^blocks\.(?P<i>\d+)\.(?P<rest>.+)$"),
}

# layout -> {block-relative module: ours} for modules whose name does not depend on the FFN kind;
# "qkv" entries are split by convert._split_qkv
_COMMON = {
    "official": {
        "norm1": "norm1", "norm2": "norm2", "ls1.gamma": "ls1.gamma", "ls2.gamma": "ls2.gamma",
        "attn.proj": "attn.proj",
    },
    "timm": {
        "norm1": "norm1", "norm2": "norm2", "gamma_1": "ls1.gamma", "gamma_2": "ls2.gamma",
        "attn.proj": "attn.proj", "attn.q_proj": "attn.q", "attn.k_proj": "attn.k",
        "attn.v_proj": "attn.v", "attn.q_bias": "attn.q.bias", "attn.v_bias": "attn.v.bias",
    },
    "hf": {
        "norm1": "norm1", "norm2": "norm2", "layer_scale1.lambda1": "ls1.gamma",
        "layer_scale2.lambda1": "ls2.gamma", "attention.q_proj": "attn.q",
        "attention.k_proj": "attn.k", "attention.v_proj": "attn.v",
        "attention.o_proj": "attn.proj",
    },
}
# layout -> ffn kind -> {source module: ours}
FFN_KEYS: dict[str, dict[str, dict[str, str]]] = {
    "official": {
        "mlp": {"mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"},
        "swiglu": {"mlp.w1": "mlp.w1", "mlp.w2": "mlp.w2", "mlp.w3": "mlp.w3"},
    },
    "timm": {
        "mlp": {"mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"},
        "swiglu": {"mlp.fc1_g": "mlp.w1", "mlp.fc1_x": "mlp.w2", "mlp.fc2": "mlp.w3"},
    },
    "hf": {
        "mlp": {"mlp.up_proj": "mlp.fc1", "mlp.down_proj": "mlp.fc2"},
        "swiglu": {"mlp.gate_proj": "mlp.w1", "mlp.up_proj": "mlp.w2", "mlp.down_proj": "mlp.w3"},
    },
}
for _layout, _table in FFN_KEYS.items():
    for _kind in _table:
        _table[_kind] = {**_COMMON[_layout], **_table[_kind]}

# a block whose keys contain one of these (block-relative, before the parameter name) is SwiGLU
SWIGLU_MARKERS = ("mlp.w1", "mlp.fc1_g", "mlp.gate_proj")
# keys read for checks or dropped on purpose (never part of the model's function at inference)
IGNORED = re.compile(
    r"^(?:rope_embed\.periods|rope\..*|local_cls_norm\..*|projectors\..*|head\..*|fc_norm\..*"
    r"|dino_head\..*|ibot_head\..*|classifier\..*)$"
)
