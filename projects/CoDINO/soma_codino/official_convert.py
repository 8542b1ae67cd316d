"""The official Co-DINO's (mmdet ``PEFTBackboneCoDETR``) neck and heads, renamed to ours.

Every key group of the official detector outside ``backbone.model.*`` (which
``soma_d2.checkpoint.official_soma.convert_official_backbone`` maps) has a rule here: the
``ChannelMapper`` neck, the query head's transformer (encoder and decoder layers, which mmcv names
``attentions.i`` / ``ffns.0`` / ``norms.i`` by position), its two-stage parts (``enc_output``,
branch index ``num_decoder_layers``), the DN label embedding, the auxiliary-query projections, and
the collaborative RPN, RoI and ATSS heads. The one change of values is the RPN's anchor order:
mmdet's ``AnchorGenerator`` enumerates the anchors of a location ratio-first (``ratio * S +
scale``), Detectron2's ``DefaultAnchorGenerator`` (ours) size-first (``scale * R + ratio``), so the
objectness and delta output channels are permuted. The ATSS head has one anchor per location and
the RoI head's class order (7 classes, background last) and class-specific box layout are the same
on both sides.
"""
from __future__ import annotations

import re
from collections.abc import Mapping

import torch

__all__ = ["anchor_permutation", "convert_official_codino", "convert_official_codino_detector"]

_RULES: list[tuple[re.Pattern, str]] = [(re.compile(p), r) for p, r in [
    # ChannelMapper: ConvModule(conv, gn) -> Sequential(conv, gn)
    (r"^neck\.convs\.(\d+)\.conv\.(weight|bias)$", r"neck.convs.\1.0.\2"),
    (r"^neck\.convs\.(\d+)\.gn\.(weight|bias)$", r"neck.convs.\1.1.\2"),
    (r"^neck\.extra_convs\.0\.conv\.(weight|bias)$", r"neck.extra.0.\1"),
    (r"^neck\.extra_convs\.0\.gn\.(weight|bias)$", r"neck.extra.1.\1"),
    # query head: transformer parts hoisted to the head
    (r"^query_head\.transformer\.level_embeds$", "query_head.level_embed"),
    (r"^query_head\.transformer\.(enc_output|enc_output_norm|query_embed)\.(weight|bias)$",
     r"query_head.\1.\2"),
    (r"^query_head\.transformer\.(aux_pos_trans|aux_pos_trans_norm)\.(\d+)\.(weight|bias)$",
     r"query_head.\1.\2.\3"),
    # encoder: (self_attn, norm, ffn, norm)
    (r"^query_head\.transformer\.encoder\.layers\.(\d+)\.attentions\.0\.(\w+)\.(weight|bias)$",
     r"query_head.encoder.layers.\1.self_attn.\2.\3"),
    (r"^query_head\.transformer\.(encoder|decoder)\.layers\.(\d+)\.ffns\.0\.layers\.0\.0\."
     r"(weight|bias)$", r"query_head.\1.layers.\2.ffn.layers.0.\3"),
    (r"^query_head\.transformer\.(encoder|decoder)\.layers\.(\d+)\.ffns\.0\.layers\.1\."
     r"(weight|bias)$", r"query_head.\1.layers.\2.ffn.layers.2.\3"),
    (r"^query_head\.transformer\.encoder\.layers\.(\d+)\.norms\.0\.(weight|bias)$",
     r"query_head.encoder.layers.\1.norm1.\2"),
    (r"^query_head\.transformer\.encoder\.layers\.(\d+)\.norms\.1\.(weight|bias)$",
     r"query_head.encoder.layers.\1.norm2.\2"),
    # decoder: (self_attn, norm, cross_attn, norm, ffn, norm)
    (r"^query_head\.transformer\.decoder\.layers\.(\d+)\.attentions\.0\.attn\."
     r"(in_proj_weight|in_proj_bias|out_proj\.weight|out_proj\.bias)$",
     r"query_head.decoder.layers.\1.self_attn.\2"),
    (r"^query_head\.transformer\.decoder\.layers\.(\d+)\.attentions\.1\.(\w+)\.(weight|bias)$",
     r"query_head.decoder.layers.\1.cross_attn.\2.\3"),
    (r"^query_head\.transformer\.decoder\.layers\.(\d+)\.norms\.([012])\.(weight|bias)$",
     None),  # norms.i -> norm{i+1}, see _decoder_norm
    (r"^query_head\.transformer\.decoder\.(ref_point_head\.\d+|norm)\.(weight|bias)$",
     r"query_head.decoder.\1.\2"),
    # prediction branches (index num_decoder_layers = two-stage proposals), DN, aux downsample
    (r"^query_head\.(cls_branches\.\d+|reg_branches\.\d+\.\d+|downsample\.\d+)\.(weight|bias)$",
     r"query_head.\1.\2"),
    (r"^query_head\.dn_generator\.label_embedding\.weight$",
     "query_head.dn_generator.label_embedding.weight"),
    # collaborative Faster R-CNN branch
    (r"^rpn_head\.rpn_conv\.(weight|bias)$", r"rcnn.rpn.rpn_head.conv.\1"),
    (r"^rpn_head\.rpn_cls\.(weight|bias)$", r"rcnn.rpn.rpn_head.objectness_logits.\1"),
    (r"^rpn_head\.rpn_reg\.(weight|bias)$", r"rcnn.rpn.rpn_head.anchor_deltas.\1"),
    (r"^roi_head\.0\.bbox_head\.shared_fcs\.0\.(weight|bias)$", r"rcnn.roi_heads.box_head.fc1.\1"),
    (r"^roi_head\.0\.bbox_head\.shared_fcs\.1\.(weight|bias)$", r"rcnn.roi_heads.box_head.fc2.\1"),
    (r"^roi_head\.0\.bbox_head\.fc_cls\.(weight|bias)$",
     r"rcnn.roi_heads.box_predictor.cls_score.\1"),
    (r"^roi_head\.0\.bbox_head\.fc_reg\.(weight|bias)$",
     r"rcnn.roi_heads.box_predictor.bbox_pred.\1"),
    # collaborative ATSS branch
    (r"^bbox_head\.0\.(cls|reg)_convs\.0\.conv\.weight$", r"atss.\1_convs.0.weight"),
    (r"^bbox_head\.0\.(cls|reg)_convs\.0\.gn\.(weight|bias)$", r"atss.\1_convs.1.\2"),
    (r"^bbox_head\.0\.(atss_cls|atss_reg|atss_centerness)\.(weight|bias)$", r"atss.\1.\2"),
    (r"^bbox_head\.0\.scales\.(\d+)\.scale$", r"atss.scales.\1.scale"),
]]


def anchor_permutation(num_scales: int = 3, num_ratios: int = 3) -> torch.Tensor:
    """``perm`` with ``ours[j] = official[perm[j]]`` for per-anchor channels: our anchor ``j =
    s * R + r`` (Detectron2, size-first) is mmdet's anchor ``r * S + s`` (ratio-first)."""
    s, r = torch.meshgrid(torch.arange(num_scales), torch.arange(num_ratios), indexing="ij")
    return (r * num_scales + s).reshape(-1)


def _permute_anchor_channels(value: torch.Tensor, perm: torch.Tensor, per_anchor: int
                             ) -> torch.Tensor:
    """Reorder dim 0 (``anchor * per_anchor + k``) of a conv weight or bias by anchor."""
    if value.shape[0] != len(perm) * per_anchor:
        raise ValueError(f"expected {len(perm) * per_anchor} output channels ({len(perm)} anchors "
                         f"x {per_anchor}), got {value.shape[0]}")
    grouped = value.reshape(len(perm), per_anchor, *value.shape[1:])
    return grouped[perm].reshape(value.shape).contiguous()


def convert_official_codino(state: Mapping[str, torch.Tensor], num_scales: int = 3,
                            num_ratios: int = 3) -> tuple[dict[str, torch.Tensor], set[str]]:
    """Convert the neck and heads of an official Co-DINO state dict (mmdet names, no
    ``module.``) to soma-d2's ``SoMACoDINO`` names; returns (converted tensors, consumed source
    keys). ``backbone.*`` and anything unknown is left unconsumed, so that the caller can
    convert the backbone and name the rest. ``num_scales`` / ``num_ratios`` are the RPN's anchor
    scales per octave and ratios (3 / 3 in the official recipe)."""
    perm = anchor_permutation(num_scales, num_ratios)
    out: dict[str, torch.Tensor] = {}
    consumed: set[str] = set()
    for key, value in state.items():
        for pattern, replacement in _RULES:
            m = pattern.match(key)
            if m is None:
                continue
            if replacement is None:
                new = (f"query_head.decoder.layers.{m[1]}.norm{int(m[2]) + 1}.{m[3]}")
            else:
                new = m.expand(replacement)
            if key.startswith("rpn_head.rpn_cls."):
                value = _permute_anchor_channels(value, perm, 1)
            elif key.startswith("rpn_head.rpn_reg."):
                value = _permute_anchor_channels(value, perm, 4)
            out[new] = value
            consumed.add(key)
            break
    return out, consumed


def convert_official_codino_detector(state: Mapping[str, torch.Tensor],
                                     source: str = "<official state dict>"
                                     ) -> dict[str, torch.Tensor]:
    """A whole official ``PEFTBackboneCoDETR`` state dict (backbone merged in) as a soma-d2
    ``SoMACoDINO`` state dict (MODE released); any key not converted is an error naming it."""
    from soma_d2.checkpoint.official_soma import check_consumed, convert_official_backbone

    backbone, used_backbone = convert_official_backbone(state, "backbone.net.")
    heads, used_heads = convert_official_codino(state)
    check_consumed(state, used_backbone | used_heads, source=source)
    return {**backbone, **heads}
