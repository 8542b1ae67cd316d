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

from ...layers.vit_tensors import ffn_hidden_width, swiglu_hidden_features, to_2tuple
from ..vit_keys import check_ffn_layer, vit_key_schema

__all__ = ["expected_vit_keys"]

# DinoVisionTransformer's defaults of the arguments that shape its parameters
_DEFAULTS = dict(img_size=518, patch_size=14, embed_dim=768, depth=12, mlp_ratio=4.0,
                 qkv_bias=True, ffn_layer="mlp", layer_scale_init=1e-5, num_register_tokens=0,
                 in_chans=3, ffn_hidden_dim=None)


def expected_vit_keys(config: Mapping) -> dict[str, tuple[int, ...]]:
    """Names and shapes of ``DinoVisionTransformer(**config).state_dict()``, in its order."""
    c = {**_DEFAULTS, **config}
    check_ffn_layer(c)
    dim, patch = int(c["embed_dim"]), int(c["patch_size"])
    img_h, img_w = to_2tuple(c["img_size"], "img_size")
    tokens = 1 + math.ceil(img_h / patch) * math.ceil(img_w / patch)
    hidden = ffn_hidden_width(c["ffn_hidden_dim"], c["ffn_layer"], dim, c["mlp_ratio"],
                              swiglu_hidden_features)
    fc1_out = 2 * hidden if c["ffn_layer"] == "swiglu" else hidden

    def mlp_keys(m: str) -> dict[str, tuple[int, ...]]:
        return {m + "fc1.weight": (fc1_out, dim), m + "fc1.bias": (fc1_out,),
                m + "fc2.weight": (dim, hidden), m + "fc2.bias": (dim,)}

    leading = {"cls_token": (1, 1, dim), "pos_embed": (1, tokens, dim)}
    return vit_key_schema(c, leading, (c["qkv_bias"],) * 3, mlp_keys)
