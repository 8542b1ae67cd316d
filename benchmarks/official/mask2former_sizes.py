"""The two model sizes of the Mask2Former equivalence harness, shared by both halves.

Plain data (no mmseg, no Detectron2 import), so the official half (side environment) and the
soma-d2 half (project environment) build the same model: `full` is the official recipe
(configs/sora/sora_dinov2-L_mask2former.py: DINOv2 ViT-L/16 at 512, SoRA rank 16 from block 8,
Mask2Former 256 channels, 100 queries, 6 + 9 layers, 12,544 points), `tiny` shrinks every width
and depth so that the whole comparison runs in seconds and the converter test's key list stays
small. Inputs: the training batch at the crop size, a whole-image batch at a non-square size (so
the position embedding is resampled on both sides) and one slide-inference image.
"""
from __future__ import annotations

__all__ = ["SIZES"]

SIZES: dict[str, dict] = {
    "tiny": {
        "embed_dim": 64, "depth": 4, "num_heads": 4, "img_size": 64, "out_indices": [0, 1, 2, 3],
        "rank": 4, "start_lora_idx": 2,
        "feat_channels": 64, "num_groups": 32, "attn_heads": 8, "num_classes": 19,
        "num_queries": 10, "enc_layers": 2, "enc_ffn": 128, "dec_layers": 3, "dec_ffn": 128,
        "num_points": 300,
        "train_batch": 2, "train_size": [64, 64], "whole_batch": 2, "whole_size": [64, 96],
        "slide_size": [96, 128], "slide_crop": [64, 64], "slide_stride": [43, 43],
    },
    "full": {
        "embed_dim": 1024, "depth": 24, "num_heads": 16, "img_size": 512,
        "out_indices": [7, 11, 15, 23], "rank": 16, "start_lora_idx": 8,
        "feat_channels": 256, "num_groups": 32, "attn_heads": 8, "num_classes": 19,
        "num_queries": 100, "enc_layers": 6, "enc_ffn": 1024, "dec_layers": 9, "dec_ffn": 2048,
        "num_points": 12544,
        "train_batch": 1, "train_size": [512, 512], "whole_batch": 1, "whole_size": [512, 768],
        "slide_size": [512, 1024], "slide_crop": [512, 512], "slide_stride": [341, 341],
    },
}
