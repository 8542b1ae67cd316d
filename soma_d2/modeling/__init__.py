"""Detectron2 modeling parts: the DINOv2 and DINOv3 ViTs, the SoMA backbone + pyramid (registered
builders)."""
# importing backbone / segmentation registers build_soma_vit_backbone and the segmentor
from .backbone import (
    DinoViTBackboneNet,
    MultiLevelFeaturePyramid,
    apply_soma_mode,
    build_soma_vit,
    build_soma_vit_backbone,
)
from .dinov3 import DINOV3_ARCHS, DinoV3VisionTransformer, build_dinov3_vit
from .dinov3_backbone import DinoV3BackboneNet, resolve_vit_family
from .segmentation import SoMASemanticSegmentor, slide_windows
from .vit import VIT_ARCHS, DinoVisionTransformer, build_dinov2_vit

__all__ = [
    "DINOV3_ARCHS",
    "DinoV3BackboneNet",
    "DinoV3VisionTransformer",
    "build_dinov3_vit",
    "resolve_vit_family",
    "VIT_ARCHS",
    "DinoVisionTransformer",
    "build_dinov2_vit",
    "DinoViTBackboneNet",
    "MultiLevelFeaturePyramid",
    "apply_soma_mode",
    "build_soma_vit",
    "build_soma_vit_backbone",
    "SoMASemanticSegmentor",
    "slide_windows",
]
