"""DINOv3 weights of any public layout (official, timm, HF), converted to our DINOv3 ViT's layout.

``keys`` holds each source layout's key map, ``vit_schema`` the model's own key schema (written
out from the constructor's arguments), ``convert`` the layout and family detection, the renaming,
the masked q/k/v split and the check against that schema. Reading the file (torch or
safetensors, wrappers, model prefix) is shared with the DINOv2 loader.
"""
from .convert import (
    LAYOUTS,
    Dinov3Conversion,
    convert_dinov3_state_dict,
    detect_dinov3_layout,
    detect_vit_family,
    infer_dinov3_config,
    load_dinov3_weights,
)
from .vit_schema import expected_dinov3_keys

__all__ = [
    "LAYOUTS",
    "Dinov3Conversion",
    "convert_dinov3_state_dict",
    "detect_dinov3_layout",
    "detect_vit_family",
    "expected_dinov3_keys",
    "infer_dinov3_config",
    "load_dinov3_weights",
]
