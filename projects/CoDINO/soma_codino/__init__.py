"""Co-DINO (Co-DETR's collaborative hybrid assignments on DINO) on a SoMA-adapted DINOv2 ViT.

The paper's domain-generalized detector as a Detectron2 project: importing this package registers
the `SoMACoDINO` meta-architecture and the `codino_detr` dataset mapper; `add_config(cfg)` adds the
MODEL.CODINO keys. soma_d2.config calls it for every installed project package.
"""
from .config import add_config
from .detector import SoMACoDINO
from .mapper import CoDINODatasetMapper

__all__ = ["add_config", "SoMACoDINO", "CoDINODatasetMapper"]
