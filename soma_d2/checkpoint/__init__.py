"""Foundation-model weight loading (DINOv2 in any public layout) and adapter checkpoints."""
from .dinov2 import (
    Dinov2Conversion,
    convert_dinov2_state_dict,
    detect_dinov2_layout,
    expected_vit_keys,
    infer_vit_config,
    load_dinov2_weights,
    read_weight_file,
)
from .dinov2_tensors import interpolate_pos_embed, resample_patch_embed

__all__ = [
    "Dinov2Conversion",
    "convert_dinov2_state_dict",
    "detect_dinov2_layout",
    "expected_vit_keys",
    "infer_vit_config",
    "interpolate_pos_embed",
    "load_dinov2_weights",
    "read_weight_file",
    "resample_patch_embed",
]
