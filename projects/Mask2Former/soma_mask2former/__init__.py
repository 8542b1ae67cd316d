"""SoMA + Mask2Former: the paper's domain-generalized semantic segmenter as a Detectron2 project.

Importing the package registers `SoMAMask2Former` (META_ARCH_REGISTRY), `Mask2FormerHead`
(SEM_SEG_HEADS_REGISTRY) and the `mask2former_semseg` input pipeline (soma_d2's MAPPER_REGISTRY);
the backbone is soma_d2's `build_soma_vit_taps_backbone`. `PROJECT` is what the ``soma_d2.projects``
entry point (setup.py) hands soma_d2: `add_mask2former_config` adds `MODEL.MASK2FORMER` and
`validate_mask2former_config` checks it when the config is built. See projects/Mask2Former/README.md.
"""
from soma_d2.project_registry import ProjectHooks

from .config import add_mask2former_config, validate_mask2former_config
from .convert import convert_transformers_mask2former
from .head import Mask2FormerHead, semantic_inference
from .mapper import mask2former_semseg
from .meta_arch import SoMAMask2Former
from .official_convert import convert_official_mask2former

PROJECT = ProjectHooks("mask2former", add_mask2former_config, validate_mask2former_config)

__all__ = [
    "PROJECT",
    "Mask2FormerHead",
    "SoMAMask2Former",
    "add_mask2former_config",
    "convert_official_mask2former",
    "mask2former_semseg",
    "convert_transformers_mask2former",
    "semantic_inference",
    "validate_mask2former_config",
]
