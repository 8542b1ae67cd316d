"""`SoMAMask2Former`: the paper's DG segmenter as a Detectron2 meta-architecture.

It is `SoMASemanticSegmentor` (normalise, pad to the backbone's divisibility, whole or
sliding-window inference, TTA) with the backbone and head the official model needs: the four raw
ViT taps (`build_soma_vit_taps_backbone`) and `Mask2FormerHead`. Other names are refused, so a
config cannot silently pair the head with the ViTDet pyramid; slide windows must be multiples of
the coarsest stride (32), so no window is padded.
"""
from __future__ import annotations

from detectron2.config import CfgNode
from detectron2.modeling import META_ARCH_REGISTRY

from soma_d2.modeling import SoMASemanticSegmentor

__all__ = ["SoMAMask2Former"]

BACKBONE_NAME = "build_soma_vit_taps_backbone"
HEAD_NAME = "Mask2FormerHead"


@META_ARCH_REGISTRY.register()
class SoMAMask2Former(SoMASemanticSegmentor):
    """See the module doc."""

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict:
        for key, want in (("MODEL.BACKBONE.NAME", BACKBONE_NAME),
                          ("MODEL.SEM_SEG_HEAD.NAME", HEAD_NAME)):
            node, _, leaf = key.rpartition(".")
            value = cfg.MODEL[node.split(".")[1]][leaf]
            if value != want:
                raise ValueError(f"MODEL.META_ARCHITECTURE SoMAMask2Former needs {key}={want!r}, "
                                 f"got {value!r}")
        ret = super().from_config(cfg)
        div = ret["backbone"].size_divisibility
        inf = cfg.MODEL.SEM_SEG_INFERENCE
        if inf.MODE == "slide" and any(int(c) % div for c in inf.CROP_SIZE):
            raise ValueError(
                f"MODEL.SEM_SEG_INFERENCE.CROP_SIZE={tuple(inf.CROP_SIZE)} is not a multiple of "
                f"the coarsest feature stride {div}: every slide window would be padded, unlike "
                "the official slide inference (use e.g. 512 or 1024)"
            )
        return ret
