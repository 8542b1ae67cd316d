"""SoMA + Mask2Former: the paper's domain-generalized semantic segmenter as a Detectron2 project.

Importing the package registers `SoMAMask2Former` (META_ARCH_REGISTRY), `Mask2FormerHead`
(SEM_SEG_HEADS_REGISTRY), `build_soma_vit_taps_backbone` (BACKBONE_REGISTRY) and the
`mask2former_semseg` input pipeline (soma_d2.data.mappers.MAPPER_REGISTRY); `add_config(cfg)` adds
`MODEL.MASK2FORMER`. See projects/Mask2Former/README.md.
"""
from .backbone import ViTTapsBackbone, build_soma_vit_taps_backbone
from .config import add_config
from .convert import convert_transformers_mask2former
from .head import Mask2FormerHead, semantic_inference
from .mapper import build_mask2former_mapper
from .meta_arch import SoMAMask2Former
from .official_convert import convert_official_mask2former

__all__ = [
    "Mask2FormerHead",
    "SoMAMask2Former",
    "ViTTapsBackbone",
    "add_config",
    "build_mask2former_mapper",
    "build_soma_vit_taps_backbone",
    "convert_official_mask2former",
    "convert_transformers_mask2former",
    "semantic_inference",
]
