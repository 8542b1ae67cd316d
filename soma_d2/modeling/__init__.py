"""Detectron2 modeling parts: the DINOv2 ViT, the SoMA backbone + pyramid (registered builders)."""
from .vit import VIT_ARCHS, DinoVisionTransformer, build_dinov2_vit
from .backbone import (  # noqa: I001  (registers build_soma_vit_backbone on import)
    DinoViTBackboneNet,
    MultiLevelFeaturePyramid,
    apply_soma_mode,
    build_soma_vit,
    build_soma_vit_backbone,
)

__all__ = [
    "VIT_ARCHS",
    "DinoVisionTransformer",
    "build_dinov2_vit",
    "DinoViTBackboneNet",
    "MultiLevelFeaturePyramid",
    "apply_soma_mode",
    "build_soma_vit",
    "build_soma_vit_backbone",
]
