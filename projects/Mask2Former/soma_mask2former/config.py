"""Config keys of the Mask2Former project (`MODEL.MASK2FORMER`), with the official values.

Defaults are the official head (official: configs/_base_/models/dinov2_mask2former.py): 256 channels, 100 queries, a 6-layer
deformable pixel decoder on 3 levels and a 9-layer masked-attention decoder, CE 2.0 with no-object
weight 0.1, mask BCE 5.0 and dice 5.0 on 12,544 importance-sampled points. A tiny demo config only
shrinks the sizes.
"""
from __future__ import annotations

from detectron2.config import CfgNode as CN

__all__ = ["add_mask2former_config", "validate_mask2former_config"]

BACKBONE_NAME = "build_soma_vit_taps_backbone"
HEAD_NAME = "Mask2FormerHead"


def add_mask2former_config(cfg: CN) -> CN:
    """Add `MODEL.MASK2FORMER` (head sizes, losses, test resize rules) to `cfg`."""
    m = CN()
    m.HIDDEN_DIM = 256  # feat_channels / out_channels of the head
    m.NUM_QUERIES = 100  # learnable queries (query_feat + query_embed)
    m.NUM_HEADS = 8  # attention heads of the pixel decoder (MSDA) and of the decoder
    m.NUM_GROUPS = 32  # GroupNorm groups of the pixel decoder's convs
    m.ENC_LAYERS = 6  # deformable encoder layers of the pixel decoder
    m.ENC_FFN_DIM = 1024  # FFN width of the pixel decoder's encoder layers
    m.ENC_POINTS = 4  # MSDA sampling points per head and level
    m.DEC_LAYERS = 9  # masked-attention decoder layers (10 prediction sets with the initial one)
    m.DEC_FFN_DIM = 2048  # FFN width of the decoder layers
    m.MASK_DIM = 256  # channels of the stride-4 mask features
    # losses and matching
    m.CLASS_WEIGHT = 2.0  # loss_cls weight and matching class cost
    m.MASK_WEIGHT = 5.0  # point-sampled BCE weight and matching cost
    m.DICE_WEIGHT = 5.0  # point-sampled dice weight and matching cost
    m.NO_OBJECT_WEIGHT = 0.1  # CE class weight of the no-object class
    m.TRAIN_NUM_POINTS = 12544  # points per mask for losses and matching (112^2)
    m.OVERSAMPLE_RATIO = 3.0  # candidates = ratio x points for importance sampling
    m.IMPORTANCE_SAMPLE_RATIO = 0.75  # share of the points taken at the most uncertain candidates
    m.DEEP_SUPERVISION = True  # losses on all intermediate predictions
    # backbone names (substrings) frozen on top of MODEL.SOMA.MODE (official full fine-tuning
    # freezes norms, layer scales, patch and position embeddings)
    m.FREEZE_BACKBONE_PATTERNS = []
    # per-target test resize: [substring of the image path, long side, short side]; the first rule
    # whose substring is in file_name wins (mmcv keep-ratio rescale into (long, short)); no match
    # falls back to INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST
    m.TEST_RESIZE = []
    # training resize: "choice" = short side drawn from INPUT.MIN_SIZE_TRAIN (mmseg
    # RandomChoiceResize + ResizeShortestEdge, long side <= INPUT.MAX_SIZE_TRAIN); "ratio" = mmseg
    # RandomResize(scale=INPUT.SEM_SEG_RESIZE, ratio_range=INPUT.RANDOM_SCALE)
    m.TRAIN_RESIZE = "choice"
    # subset list (one image stem per line, e.g. Cityscapes train_1_16_v1.txt) restricting the
    # training sets; "" = all images
    m.TRAIN_SUBSET_LIST = ""
    cfg.MODEL.MASK2FORMER = m
    return cfg


def validate_mask2former_config(cfg: CN) -> None:
    """Checks of a SoMAMask2Former config when it is built (before any model), naming the key: the
    backbone and head must be the official pair (not the ViTDet pyramid), and slide windows must be
    multiples of the coarsest tap stride, so that no window is padded."""
    if cfg.MODEL.META_ARCHITECTURE != "SoMAMask2Former":
        return
    for key, value, want in (("MODEL.BACKBONE.NAME", cfg.MODEL.BACKBONE.NAME, BACKBONE_NAME),
                             ("MODEL.SEM_SEG_HEAD.NAME", cfg.MODEL.SEM_SEG_HEAD.NAME, HEAD_NAME)):
        if value != want:
            raise ValueError(f"MODEL.META_ARCHITECTURE SoMAMask2Former needs {key}={want!r}, "
                             f"got {value!r}")
    div = max(cfg.MODEL.VIT.PATCH_SIZE / float(s) for s in cfg.MODEL.VIT.TAP_SCALES)
    inf = cfg.MODEL.SEM_SEG_INFERENCE
    if inf.MODE == "slide" and any(int(c) % div for c in inf.CROP_SIZE):
        raise ValueError(
            f"MODEL.SEM_SEG_INFERENCE.CROP_SIZE={tuple(inf.CROP_SIZE)} is not a multiple of "
            f"the coarsest feature stride {div:g}: every slide window would be padded, unlike "
            "the official slide inference (use e.g. 512 or 1024)"
        )
