"""Convert transformers' `Mask2FormerForUniversalSegmentation` weights to `Mask2FormerHead`.

So a head can start from public Mask2Former weights, and so transformers' port serves as the
independent numerical reference of this head (tests/test_mask2former_transformers.py). The mapping,
and where the two layouts differ:

- transformers' decoder self-attention has separate `q_proj/k_proj/v_proj`; ours (and mmdet's) is
  `nn.MultiheadAttention`, so the three are stacked into `in_proj_weight` / `in_proj_bias`;
- its FPN convs are named `adapter_<k>` / `layer_<k>` finest first; ours `lateral_convs` /
  `output_convs` coarsest first;
- `Mask2FormerConfig.decoder_layers` counts prediction sets: it builds `decoder_layers - 1` layers
  (10 -> the official 9);
- its pixel decoder's `level_embed` is our `level_encoding` (mmdet's name), its decoder's
  `layernorm` our `post_norm`, `queries_features` / `queries_embedder` our `query_feat` /
  `query_embed`, `class_predictor` our `cls_embed`, the mask MLP `mask_embedder.<i>.0` our
  `mask_embed.<2i>`;
- the layer order (cross-attention -> self-attention -> FFN, post-norm), the level order of the
  memories (coarsest first) and the query/position roles are the same in both.
The backbone (`model.pixel_level_module.encoder.*`) is not converted: ours is the SoMA ViT.
"""
from __future__ import annotations

import re
from collections.abc import Mapping

import torch

__all__ = ["convert_transformers_mask2former"]

_PD = "model.pixel_level_module.decoder."
_TM = "model.transformer_module."


def _layer_rules(src: str, dst: str, parts: dict[str, str]) -> list[tuple[str, str]]:
    """Rename rules of a stack of layers: `<src>.<i>.<part>` -> `<dst>.<i>.<ours>` for each
    `part` regex -> `ours` replacement of `parts`, whose own groups count from \\2 (\\1 is the
    layer index)."""
    return [(rf"^{src}\.(\d+)\.{part}$", rf"{dst}.\1.{ours}") for part, ours in parts.items()]


_ENCODER_LAYER = {
    r"self_attn\.(\w+)\.(\w+)": r"attn.\2.\3",
    r"self_attn_layer_norm\.(\w+)": r"norm1.\2",
    r"final_layer_norm\.(\w+)": r"norm2.\2",
    r"(fc1|fc2)\.(\w+)": r"\2.\3",
}
_DECODER_LAYER = {
    r"cross_attn\.(.+)": r"cross_attn.\2",
    r"cross_attn_layer_norm\.(\w+)": r"norm1.\2",
    r"self_attn\.out_proj\.(\w+)": r"self_attn.out_proj.\2",
    r"self_attn_layer_norm\.(\w+)": r"norm2.\2",
    r"final_layer_norm\.(\w+)": r"norm3.\2",
    r"(fc1|fc2)\.(\w+)": r"\2.\3",
}

_SIMPLE = [
    (rf"^{_PD}level_embed$", "pixel_decoder.level_encoding.weight"),
    (rf"^{_PD}input_projections\.(\d+)\.(\d)\.(\w+)$", r"pixel_decoder.input_convs.\1.\2.\3"),
    *_layer_rules(rf"{_PD}encoder\.layers", "pixel_decoder.encoder", _ENCODER_LAYER),
    (rf"^{_PD}mask_projection\.(\w+)$", r"pixel_decoder.mask_feature.\1"),
    (rf"^{_TM}queries_embedder\.weight$", "transformer_decoder.query_embed.weight"),
    (rf"^{_TM}queries_features\.weight$", "transformer_decoder.query_feat.weight"),
    (rf"^{_TM}level_embed\.weight$", "transformer_decoder.level_embed.weight"),
    *_layer_rules(rf"{_TM}decoder\.layers", "transformer_decoder.layers", _DECODER_LAYER),
    (rf"^{_TM}decoder\.layernorm\.(\w+)$", r"transformer_decoder.post_norm.\1"),
    (r"^class_predictor\.(\w+)$", r"transformer_decoder.cls_embed.\1"),
]


def convert_transformers_mask2former(
    state: Mapping[str, torch.Tensor], prefix: str = ""
) -> dict[str, torch.Tensor]:
    """transformers state dict -> `Mask2FormerHead` state dict (keys prefixed by `prefix`, e.g.
    "sem_seg_head." for a full model). Raises on a head key it cannot place."""
    out: dict[str, torch.Tensor] = {}
    fpn = sorted({int(m.group(1)) for k in state
                  if (m := re.match(rf"^{_PD}adapter_(\d+)\.", k))})
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    unplaced = []
    for key, value in state.items():
        if key.startswith("model.pixel_level_module.encoder.") or key.endswith("empty_weight"):
            continue
        if m := re.match(rf"^{_PD}(adapter|layer)_(\d+)\.(\d)\.(\w+)$", key):
            kind, k, idx, leaf = m.groups()
            name = "lateral_convs" if kind == "adapter" else "output_convs"
            out[f"pixel_decoder.{name}.{len(fpn) - int(k)}.{idx}.{leaf}"] = value
            continue
        if m := re.match(rf"^{_TM}decoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(\w+)$", key):
            layer, which, leaf = m.groups()
            qkv.setdefault(f"{layer}.{leaf}", {})[which] = value
            continue
        if m := re.match(
            rf"^{_TM}decoder\.mask_predictor\.mask_embedder\.(\d+)\.0\.(\w+)$", key
        ):
            out[f"transformer_decoder.mask_embed.{2 * int(m.group(1))}.{m.group(2)}"] = value
            continue
        for pattern, repl in _SIMPLE:
            if re.match(pattern, key):
                out[re.sub(pattern, repl, key)] = value
                break
        else:
            unplaced.append(key)
    if unplaced:
        raise KeyError(
            f"cannot place {len(unplaced)} transformers Mask2Former keys in Mask2FormerHead (e.g. "
            f"{unplaced[:5]}); input projections of the decoder (enforce_input_projection) are "
            "not part of the official head"
        )
    for layer_leaf, parts in qkv.items():
        layer, leaf = layer_leaf.split(".")
        if set(parts) != {"q", "k", "v"}:
            raise KeyError(f"decoder layer {layer} self-attention {leaf}: missing "
                           f"{sorted({'q', 'k', 'v'} - set(parts))}")
        name = "in_proj_weight" if leaf == "weight" else "in_proj_bias"
        out[f"transformer_decoder.layers.{layer}.self_attn.{name}"] = torch.cat(
            [parts["q"], parts["k"], parts["v"]], 0
        )
    return {prefix + k: v for k, v in out.items()}
