"""Foundation-model weight loading (DINOv2 in any public layout) and adapter checkpoints.

The loading API the rest of the project uses is imported from here; the rest of the DINOv2
conversion API (layouts, layout detection, the conversion record) from `soma_d2.checkpoint.dinov2`.
The tensor helpers both the loader and the ViT use are `soma_d2.layers.vit_tensors`.
"""
from .dinov2 import (
    convert_dinov2_state_dict,
    expected_vit_keys,
    infer_vit_config,
    load_dinov2_weights,
    read_weight_file,
)

__all__ = [
    "convert_dinov2_state_dict",
    "expected_vit_keys",
    "infer_vit_config",
    "load_dinov2_weights",
    "read_weight_file",
]
