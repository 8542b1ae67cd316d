"""The key-schema walk shared by the DINOv2 and DINOv3 ViT schemas.

Both ViTs lay out their state dict the same way (prefix parameters, ``mask_token``, the patch
projection, pre-norm blocks with separate q/k/v, layer-scale, then the final norm); they differ
only in the leading parameters (DINOv2's position table), which q/k/v linears carry a bias and the
FFN's linears. Each family's ``vit_schema`` passes those and this module writes the rest once.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping

Shapes = dict[str, tuple[int, ...]]


def check_ffn_layer(config: Mapping) -> None:
    """Reject an unknown ``ffn_layer`` in a merged schema config."""
    if config["ffn_layer"] not in ("mlp", "swiglu"):
        raise ValueError(f"ffn_layer must be 'mlp' or 'swiglu', got {config['ffn_layer']!r}")


def vit_key_schema(config: Mapping, leading: Shapes, qkv_biases: tuple[bool, bool, bool],
                   mlp_keys: Callable[[str], Shapes]) -> Shapes:
    """Names and shapes of a separate-q/k/v ViT's state dict, in its order.

    ``leading`` holds the parameters before the register tokens (``cls_token`` ...);
    ``qkv_biases`` says whether q, k and v have a bias; ``mlp_keys(prefix)`` gives one block's FFN
    keys under ``prefix`` (``"blocks.{i}.mlp."``).
    """
    dim, patch = int(config["embed_dim"]), int(config["patch_size"])
    keys: Shapes = dict(leading)
    if int(config["num_register_tokens"]):
        keys["register_tokens"] = (1, int(config["num_register_tokens"]), dim)
    keys["mask_token"] = (1, dim)
    keys["patch_embed.proj.weight"] = (dim, int(config["in_chans"]), patch, patch)
    keys["patch_embed.proj.bias"] = (dim,)
    for i in range(int(config["depth"])):
        b = f"blocks.{i}."
        keys[b + "norm1.weight"] = keys[b + "norm1.bias"] = (dim,)
        for name, has_bias in zip(("q", "k", "v"), qkv_biases):
            keys[f"{b}attn.{name}.weight"] = (dim, dim)
            if has_bias:
                keys[f"{b}attn.{name}.bias"] = (dim,)
        keys[b + "attn.proj.weight"], keys[b + "attn.proj.bias"] = (dim, dim), (dim,)
        if config["layer_scale_init"]:
            keys[b + "ls1.gamma"] = (dim,)
        keys[b + "norm2.weight"] = keys[b + "norm2.bias"] = (dim,)
        keys.update(mlp_keys(b + "mlp."))
        if config["layer_scale_init"]:
            keys[b + "ls2.gamma"] = (dim,)
    keys["norm.weight"] = keys["norm.bias"] = (dim,)
    return keys
