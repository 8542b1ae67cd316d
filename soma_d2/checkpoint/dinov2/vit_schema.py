"""The key schema (names, shapes, order) of `DinoVisionTransformer(**config).state_dict()`.

The loader checks every converted checkpoint against it, naming the missing, unknown and
wrong-shaped keys. It is written out here, from the constructor's arguments, rather than read from
a model built on the meta device, so that the weight loader does not import `soma_d2.modeling`
(which imports Detectron2 and this loader). tests/test_vit.py checks it against the model's own
`state_dict()` over registers, SwiGLU, biases, layer-scale and rectangular grids, in order.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

from ...layers.vit_tensors import swiglu_hidden_features, to_2tuple

__all__ = ["expected_vit_keys"]

# DinoVisionTransformer's defaults of the arguments that shape its parameters
_DEFAULTS = dict(img_size=518, patch_size=14, embed_dim=768, depth=12, mlp_ratio=4.0,
                 qkv_bias=True, ffn_layer="mlp", layer_scale_init=1e-5, num_register_tokens=0,
                 in_chans=3, ffn_hidden_dim=None)


def expected_vit_keys(config: Mapping) -> dict[str, tuple[int, ...]]:
    """Names and shapes of ``DinoVisionTransformer(**config).state_dict()``, in its order."""
    c = {**_DEFAULTS, **config}
    if c["ffn_layer"] not in ("mlp", "swiglu"):
        raise ValueError(f"ffn_layer must be 'mlp' or 'swiglu', got {c['ffn_layer']!r}")
    dim, patch = int(c["embed_dim"]), int(c["patch_size"])
    img_h, img_w = to_2tuple(c["img_size"], "img_size")
    tokens = 1 + math.ceil(img_h / patch) * math.ceil(img_w / patch)
    if c["ffn_hidden_dim"] is not None:
        hidden = int(c["ffn_hidden_dim"])
    elif c["ffn_layer"] == "swiglu":
        hidden = swiglu_hidden_features(dim, c["mlp_ratio"])
    else:
        hidden = int(dim * c["mlp_ratio"])
    fc1_out = 2 * hidden if c["ffn_layer"] == "swiglu" else hidden
    keys: dict[str, tuple[int, ...]] = {"cls_token": (1, 1, dim), "pos_embed": (1, tokens, dim)}
    if int(c["num_register_tokens"]):
        keys["register_tokens"] = (1, int(c["num_register_tokens"]), dim)
    keys["mask_token"] = (1, dim)
    keys["patch_embed.proj.weight"] = (dim, int(c["in_chans"]), patch, patch)
    keys["patch_embed.proj.bias"] = (dim,)
    for i in range(int(c["depth"])):
        b = f"blocks.{i}."
        keys[b + "norm1.weight"] = keys[b + "norm1.bias"] = (dim,)
        for name in ("q", "k", "v"):
            keys[f"{b}attn.{name}.weight"] = (dim, dim)
            if c["qkv_bias"]:
                keys[f"{b}attn.{name}.bias"] = (dim,)
        keys[b + "attn.proj.weight"], keys[b + "attn.proj.bias"] = (dim, dim), (dim,)
        if c["layer_scale_init"]:
            keys[b + "ls1.gamma"] = (dim,)
        keys[b + "norm2.weight"] = keys[b + "norm2.bias"] = (dim,)
        keys[b + "mlp.fc1.weight"], keys[b + "mlp.fc1.bias"] = (fc1_out, dim), (fc1_out,)
        keys[b + "mlp.fc2.weight"], keys[b + "mlp.fc2.bias"] = (dim, hidden), (dim,)
        if c["layer_scale_init"]:
            keys[b + "ls2.gamma"] = (dim,)
    keys["norm.weight"] = keys["norm.bias"] = (dim,)
    return keys
