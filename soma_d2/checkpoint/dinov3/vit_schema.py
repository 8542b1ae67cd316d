"""The key schema (names, shapes, order) of `DinoV3VisionTransformer(**config).state_dict()`.

The DINOv3 loader checks every converted checkpoint against it, naming the missing, unknown and
wrong-shaped keys. As for DINOv2 (``checkpoint/dinov2/vit_schema.py``), it is written out from the
constructor's arguments rather than read from a model built on the meta device, so that the
weight loader does not import `soma_d2.modeling` (which imports Detectron2 and this loader). The
RoPE periods are a non-persistent buffer, so the head count and RoPE schedule are not part of it.
tests/test_dinov3.py checks it against the model's own `state_dict()` over registers, SwiGLU,
biases, layer-scale, FFN widths, depths and widths, in order.
"""
from __future__ import annotations

from collections.abc import Mapping

from ...layers.vit_tensors import dinov3_swiglu_hidden

__all__ = ["expected_dinov3_keys"]

# DinoV3VisionTransformer's defaults of the arguments that shape its parameters
_DEFAULTS = dict(patch_size=16, embed_dim=768, depth=12, mlp_ratio=4.0, qkv_bias=True,
                 key_bias=False, ffn_layer="mlp", layer_scale_init=1e-5, num_register_tokens=4,
                 in_chans=3, ffn_hidden_dim=None)


def expected_dinov3_keys(config: Mapping) -> dict[str, tuple[int, ...]]:
    """Names and shapes of ``DinoV3VisionTransformer(**config).state_dict()``, in its order.

    Keys of ``config`` that do not shape a parameter (``num_heads``, the RoPE settings,
    ``out_indices`` ...) are ignored.
    """
    c = {**_DEFAULTS, **config}
    if c["ffn_layer"] not in ("mlp", "swiglu"):
        raise ValueError(f"ffn_layer must be 'mlp' or 'swiglu', got {c['ffn_layer']!r}")
    dim, patch = int(c["embed_dim"]), int(c["patch_size"])
    if c["ffn_hidden_dim"] is not None:
        hidden = int(c["ffn_hidden_dim"])
    elif c["ffn_layer"] == "swiglu":
        hidden = dinov3_swiglu_hidden(dim, c["mlp_ratio"])
    else:
        hidden = int(dim * c["mlp_ratio"])
    # the model's own parameters come first, then its children in assignment order
    keys: dict[str, tuple[int, ...]] = {"cls_token": (1, 1, dim)}
    if int(c["num_register_tokens"]):
        keys["register_tokens"] = (1, int(c["num_register_tokens"]), dim)
    keys["mask_token"] = (1, dim)
    keys["patch_embed.proj.weight"] = (dim, int(c["in_chans"]), patch, patch)
    keys["patch_embed.proj.bias"] = (dim,)
    for i in range(int(c["depth"])):
        b = f"blocks.{i}."
        keys[b + "norm1.weight"] = keys[b + "norm1.bias"] = (dim,)
        for name, has_bias in (("q", c["qkv_bias"]), ("k", c["key_bias"]), ("v", c["qkv_bias"])):
            keys[f"{b}attn.{name}.weight"] = (dim, dim)
            if has_bias:
                keys[f"{b}attn.{name}.bias"] = (dim,)
        keys[b + "attn.proj.weight"], keys[b + "attn.proj.bias"] = (dim, dim), (dim,)
        if c["layer_scale_init"]:
            keys[b + "ls1.gamma"] = (dim,)
        keys[b + "norm2.weight"] = keys[b + "norm2.bias"] = (dim,)
        if c["ffn_layer"] == "swiglu":
            for name in ("w1", "w2"):
                keys[f"{b}mlp.{name}.weight"], keys[f"{b}mlp.{name}.bias"] = (hidden, dim), (hidden,)
            keys[b + "mlp.w3.weight"], keys[b + "mlp.w3.bias"] = (dim, hidden), (dim,)
        else:
            keys[b + "mlp.fc1.weight"], keys[b + "mlp.fc1.bias"] = (hidden, dim), (hidden,)
            keys[b + "mlp.fc2.weight"], keys[b + "mlp.fc2.bias"] = (dim, hidden), (dim,)
        if c["layer_scale_init"]:
            keys[b + "ls2.gamma"] = (dim,)
    keys["norm.weight"] = keys["norm.bias"] = (dim,)
    return keys
