"""DINOv2 weights of any public layout, read and converted to ``DinoVisionTransformer``'s layout.

One module per concern: ``weight_file`` (reading, unwrapping, prefixes), ``official_keys`` and
``hf_keys`` (each source layout's key map), ``convert`` (layout detection, renaming, q/k/v split,
patch and position resampling), ``vit_schema`` (the model's key schema every conversion is checked
against).
"""
from .convert import (
    LAYOUTS,
    Dinov2Conversion,
    convert_dinov2_state_dict,
    detect_dinov2_layout,
    infer_vit_config,
    load_dinov2_weights,
    source_interpolation,
)
from .vit_schema import expected_vit_keys
from .weight_file import read_weight_file

__all__ = [
    "LAYOUTS",
    "Dinov2Conversion",
    "convert_dinov2_state_dict",
    "detect_dinov2_layout",
    "expected_vit_keys",
    "infer_vit_config",
    "load_dinov2_weights",
    "read_weight_file",
    "source_interpolation",
]
