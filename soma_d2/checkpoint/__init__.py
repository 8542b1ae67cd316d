"""Foundation-model weight loading (DINOv2 in any public layout) and adapter checkpoints.

Re-exports what the rest of the project loads weights with; the whole DINOv2 conversion API
(layouts, layout detection, the conversion record) is `soma_d2.checkpoint.dinov2`.
"""
from .dinov2 import (
    convert_dinov2_state_dict,
    expected_vit_keys,
    infer_vit_config,
    load_dinov2_weights,
    read_weight_file,
)
from .dinov2_tensors import interpolate_pos_embed, resample_patch_embed

__all__ = [
    "convert_dinov2_state_dict",
    "expected_vit_keys",
    "infer_vit_config",
    "interpolate_pos_embed",
    "load_dinov2_weights",
    "read_weight_file",
    "resample_patch_embed",
]


def __getattr__(name: str) -> object:
    """The rest of the DINOv2 API (e.g. ``detect_dinov2_layout``, ``Dinov2Conversion``) stays
    importable from here, as it was before the subpackage existed."""
    from . import dinov2

    if name in dinov2.__all__:
        return getattr(dinov2, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
