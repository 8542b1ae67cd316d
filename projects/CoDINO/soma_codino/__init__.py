"""Co-DINO (Co-DETR's collaborative hybrid assignments on DINO) on a SoMA-adapted DINOv2 ViT.

The paper's domain-generalized detector as a Detectron2 project: importing this package registers
the `SoMACoDINO` meta-architecture and the `codino_detr` dataset mapper. `PROJECT` is what the
``soma_d2.projects`` entry point (setup.py) hands soma_d2: `add_codino_config` adds the
MODEL.CODINO keys to every config and `validate_codino_config` checks them when the config is built.
"""
from soma_d2.project_registry import ProjectHooks

from .config import add_codino_config, validate_codino_config
from .detector import SoMACoDINO
from .mapper import CoDINODatasetMapper

PROJECT = ProjectHooks("codino", add_codino_config, validate_codino_config)

__all__ = ["PROJECT", "add_codino_config", "validate_codino_config", "SoMACoDINO",
           "CoDINODatasetMapper"]
