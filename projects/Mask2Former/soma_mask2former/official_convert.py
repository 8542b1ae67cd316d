"""Convert the official SoMA segmenter's head (`decode_head.*`, mmseg/mmdet Mask2Former) to ours.

So the released SoMA segmentation checkpoints evaluate with `Mask2FormerHead`, and so the
equivalence harness (benchmarks/official/) can load the official model's weights into ours. The
official head is mmseg 1.2.2's `Mask2FormerHead` on mmdet 3.3.0's `MSDeformAttnPixelDecoder` and
`Mask2FormerTransformerDecoder`; its layout differs from ours only in names:

- mmcv `ConvModule`s (`conv` + `gn`) are our `nn.Sequential`s (`0` + `1`);
- the encoder layers' `self_attn` is our `attn`, their `ffn.layers.0.0` / `ffn.layers.1` our
  `fc1` / `fc2`, `norms.<i>` our `norm<i+1>`, and `encoder.layers.<i>` our `encoder.<i>`;
- the decoder layers' mmcv `MultiheadAttention` wraps `nn.MultiheadAttention` as `.attn` (ours is
  the bare module), with the same `norms.<i>` / `ffn` renames (norms 0/1/2 follow cross-attention,
  self-attention and the FFN, as ours);
- `query_embed` / `query_feat` / `level_embed` / `cls_embed` / `mask_embed` sit on the head
  officially and on our `transformer_decoder`.
Tensors are not reshaped: the level orders (input convs and level encodings coarsest first, FPN
convs coarsest first), MSDA's (heads, levels, points, 2) offset layout and the in-projection order
(q, k, v) are the same. Nothing is knowingly dropped, because the official head holds no
tensor we lack: its positional encodings, loss modules (the class weights are a plain list),
assigner and sampler have none, and with `enforce_decoder_input_project=False` and equal channels
its decoder input projections are identities. So every `decode_head.*` key is converted, and any
other is an error that names it. The backbone (`backbone.model.*`) is converted by
`soma_d2.checkpoint.official_soma`; keys are read after its common reader (EMA choice and
`module.` prefixes already resolved).
"""
from __future__ import annotations

import re
from collections.abc import Mapping

import torch

__all__ = ["OFFICIAL_HEAD_PREFIX", "convert_official_mask2former"]

OFFICIAL_HEAD_PREFIX = "decode_head."

_WB = r"(weight|bias)"
_NORM = {"0": "norm1", "1": "norm2", "2": "norm3"}

# (official regex relative to OFFICIAL_HEAD_PREFIX, our name relative to the head); a callable
# replacement receives the match
_RULES: list[tuple[str, str | object]] = [
    (rf"pixel_decoder\.(input_convs|lateral_convs|output_convs)\.(\d+)\.conv\.{_WB}",
     r"pixel_decoder.\1.\2.0.\3"),
    (rf"pixel_decoder\.(input_convs|lateral_convs|output_convs)\.(\d+)\.gn\.{_WB}",
     r"pixel_decoder.\1.\2.1.\3"),
    (rf"pixel_decoder\.encoder\.layers\.(\d+)\.self_attn\."
     rf"(sampling_offsets|attention_weights|value_proj|output_proj)\.{_WB}",
     r"pixel_decoder.encoder.\1.attn.\2.\3"),
    (rf"pixel_decoder\.encoder\.layers\.(\d+)\.ffn\.layers\.0\.0\.{_WB}",
     r"pixel_decoder.encoder.\1.fc1.\2"),
    (rf"pixel_decoder\.encoder\.layers\.(\d+)\.ffn\.layers\.1\.{_WB}",
     r"pixel_decoder.encoder.\1.fc2.\2"),
    (rf"pixel_decoder\.encoder\.layers\.(\d+)\.norms\.([01])\.{_WB}",
     lambda m: f"pixel_decoder.encoder.{m[1]}.{_NORM[m[2]]}.{m[3]}"),
    (r"pixel_decoder\.level_encoding\.weight", "pixel_decoder.level_encoding.weight"),
    (rf"pixel_decoder\.mask_feature\.{_WB}", r"pixel_decoder.mask_feature.\1"),
    (r"transformer_decoder\.layers\.(\d+)\.(self_attn|cross_attn)\.attn\."
     r"(in_proj_weight|in_proj_bias|out_proj\.weight|out_proj\.bias)",
     r"transformer_decoder.layers.\1.\2.\3"),
    (rf"transformer_decoder\.layers\.(\d+)\.ffn\.layers\.0\.0\.{_WB}",
     r"transformer_decoder.layers.\1.fc1.\2"),
    (rf"transformer_decoder\.layers\.(\d+)\.ffn\.layers\.1\.{_WB}",
     r"transformer_decoder.layers.\1.fc2.\2"),
    (rf"transformer_decoder\.layers\.(\d+)\.norms\.([012])\.{_WB}",
     lambda m: f"transformer_decoder.layers.{m[1]}.{_NORM[m[2]]}.{m[3]}"),
    (rf"transformer_decoder\.post_norm\.{_WB}", r"transformer_decoder.post_norm.\1"),
    (r"(query_embed|query_feat|level_embed)\.weight", r"transformer_decoder.\1.weight"),
    (rf"cls_embed\.{_WB}", r"transformer_decoder.cls_embed.\1"),
    (rf"mask_embed\.([024])\.{_WB}", r"transformer_decoder.mask_embed.\1.\2"),
]
_COMPILED = [(re.compile(p), r) for p, r in _RULES]

def _rename(rest: str) -> str | None:
    for pattern, repl in _COMPILED:
        if m := pattern.fullmatch(rest):
            return repl(m) if callable(repl) else m.expand(repl)
    return None


def convert_official_mask2former(
    state: Mapping[str, torch.Tensor], prefix: str = "sem_seg_head."
) -> tuple[dict[str, torch.Tensor], set[str]]:
    """Official segmenter state dict (any keys; only `decode_head.*` are read) -> (our head's
    tensors named `prefix` + head name, e.g. `sem_seg_head.pixel_decoder...` for
    `SoMAMask2Former`, and the set of official keys consumed).
    Raises KeyError naming every `decode_head.*` key it cannot place (e.g. decoder input
    projections, which the official config does not build)."""
    out: dict[str, torch.Tensor] = {}
    consumed: set[str] = set()
    unknown: list[str] = []
    for key, value in state.items():
        if not key.startswith(OFFICIAL_HEAD_PREFIX):
            continue
        rest = key[len(OFFICIAL_HEAD_PREFIX):]
        name = _rename(rest)
        if name is not None:
            out[prefix + name] = value
            consumed.add(key)
        else:
            unknown.append(key)
    if unknown:
        raise KeyError(
            f"cannot place {len(unknown)} official Mask2Former head key(s) in soma-d2's "
            f"Mask2FormerHead: {sorted(unknown)}; the official segmenter config "
            "(configs/_base_/models/dinov2_mask2former.py) builds none of them"
        )
    return out, consumed
