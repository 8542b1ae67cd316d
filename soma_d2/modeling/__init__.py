"""Detectron2 modeling parts: the DINOv2 and DINOv3 ViTs, the SoMA backbones (ViTDet-style pyramid,
raw taps)."""
# importing backbone / raw_taps / segmentation registers build_soma_vit_backbone,
# build_soma_vit_taps_backbone and the segmentor
from .backbone import (
    DinoViTBackboneNet,
    MultiLevelFeaturePyramid,
    apply_soma_mode,
    build_soma_vit,
    build_soma_vit_backbone,
)
from .dinov3 import DINOV3_ARCHS, DinoV3VisionTransformer, build_dinov3_vit
from .dinov3_backbone import DinoV3BackboneNet, resolve_vit_family
from .raw_taps import RawTapBackbone, build_soma_vit_taps_backbone
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
    "RawTapBackbone",
    "build_soma_vit_taps_backbone",
    "SoMASemanticSegmentor",
    "slide_windows",
]
