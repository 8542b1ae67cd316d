"""Self-supervised pretraining of a small DINOv2-architecture ViT on the synthetic weather world.

No DINOv2 weights can be downloaded here, so the CPU demo needs its own foundation model: one that
has seen every light and weather condition the scene generator knows (unlabelled), as web-scale
pretraining has seen night and rain, while the detector's labelled data is clear daytime only.
Modules: `scene_bank` (unlabelled scenes rendered under every condition, and views mixed from
them), `objective` (masked reconstruction plus cross-condition token consistency),
`official_layout` (export in the official DINOv2 or DINOv3 checkpoint layout), `trainer` (the resumable,
deterministic loop).
"""
from .official_layout import to_official_dinov3_state_dict, to_official_state_dict
from .scene_bank import SceneBank, render_scene_bank
from .trainer import PretrainConfig, pretrain

__all__ = [
    "PretrainConfig",
    "SceneBank",
    "pretrain",
    "render_scene_bank",
    "to_official_dinov3_state_dict",
    "to_official_state_dict",
]
