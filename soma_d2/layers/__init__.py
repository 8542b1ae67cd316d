"""Ops shared by the paper's heads (Co-DINO detection, Mask2Former segmentation)."""
from .ms_deform_attn import MultiScaleDeformableAttention, multi_scale_deformable_attention

__all__ = ["MultiScaleDeformableAttention", "multi_scale_deformable_attention"]
