"""Detectron2 modeling parts: the DINOv2 ViT, the SoMA backbone + pyramid (registered builders)."""
# importing backbone / segmentation registers build_soma_vit_backbone and the segmentor
from .backbone import (
    DinoViTBackboneNet,
    MultiLevelFeaturePyramid,
    apply_soma_mode,
    build_soma_vit,
    build_soma_vit_backbone,
)
from .segmentation import SoMASemanticSegmentor, slide_windows
from .vit import VIT_ARCHS, DinoVisionTransformer, build_dinov2_vit

__all__ = [
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
