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

from ...layers.vit_tensors import dinov3_swiglu_hidden, ffn_hidden_width
from ..vit_keys import check_ffn_layer, vit_key_schema

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
    check_ffn_layer(c)
    dim = int(c["embed_dim"])
    hidden = ffn_hidden_width(c["ffn_hidden_dim"], c["ffn_layer"], dim, c["mlp_ratio"],
                              dinov3_swiglu_hidden)

    def mlp_keys(m: str) -> dict[str, tuple[int, ...]]:
        if c["ffn_layer"] == "mlp":
            return {m + "fc1.weight": (hidden, dim), m + "fc1.bias": (hidden,),
                    m + "fc2.weight": (dim, hidden), m + "fc2.bias": (dim,)}
        return {m + "w1.weight": (hidden, dim), m + "w1.bias": (hidden,),
                m + "w2.weight": (hidden, dim), m + "w2.bias": (hidden,),
                m + "w3.weight": (dim, hidden), m + "w3.bias": (dim,)}

    # the model's own parameters come first, then its children in assignment order
    qkv_biases = (c["qkv_bias"], c["key_bias"], c["qkv_bias"])
    return vit_key_schema(c, {"cls_token": (1, 1, dim)}, qkv_biases, mlp_keys)
