"""Key map of HF transformers' ``Dinov2Model`` (old ``attention.attention.query`` and new
``q_proj`` names).

HF keeps q, k and v separate already; its SwiGLU FFN stores ``gate_proj``/``up_proj`` as two
linears that the loader concatenates into our fused ``fc1``.
"""
from __future__ import annotations

import re

__all__ = ["BLOCK_KEY", "BLOCK_RENAMES", "GLOBAL_RENAMES", "SWIGLU_PARTS"]

GLOBAL_RENAMES = {
    "embeddings.cls_token": "cls_token",
    "embeddings.mask_token": "mask_token",
    "embeddings.register_tokens": "register_tokens",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}
BLOCK_RENAMES = {
    "norm1": "norm1", "norm2": "norm2",
    "attention.attention.query": "attn.q", "attention.attention.key": "attn.k",
    "attention.attention.value": "attn.v", "attention.output.dense": "attn.proj",
    "attention.q_proj": "attn.q", "attention.k_proj": "attn.k", "attention.v_proj": "attn.v",
    "attention.o_proj": "attn.proj",
    "layer_scale1.lambda1": "ls1.gamma", "layer_scale2.lambda1": "ls2.gamma",
    "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
    "mlp.weights_in": "mlp.fc1", "mlp.weights_out": "mlp.fc2", "mlp.down_proj": "mlp.fc2",
}
BLOCK_KEY = re.compile(r"^encoder\.layer\.(?P<i>\d+)\.(?P<rest>.+)$")
SWIGLU_PARTS = ("mlp.gate_proj", "mlp.up_proj")
