"""Transformer pieces shared by the paper's heads (Co-DINO detection, Mask2Former segmentation),
as detrex's `detrex.layers`: the deformable attention op, the post-norm deformable encoder layer
and its reference points, sine position encodings, Hungarian matching and `inverse_sigmoid`."""
from .deformable_encoder import FFN, DeformableEncoderLayer, encoder_reference_points
from .matching import hungarian_match
from .ms_deform_attn import MultiScaleDeformableAttention, multi_scale_deformable_attention
from .position_encoding import box_sine_embedding, sine_position_encoding
from .sigmoid import inverse_sigmoid

__all__ = [
    "FFN",
    "DeformableEncoderLayer",
    "MultiScaleDeformableAttention",
    "box_sine_embedding",
    "encoder_reference_points",
    "hungarian_match",
    "inverse_sigmoid",
    "multi_scale_deformable_attention",
    "sine_position_encoding",
]
