"""MODEL.CODINO keys: every value of the official Co-DINO head is a default (official:
DGOD/configs/_base_/models/dinov2_codetr.py, e.g. num_query=900, and DGOD/projects/CO_DETR/codetr/).

Layer counts, query counts and widths are keys so that the tiny demo and tests can shrink them;
the defaults are the official model. `validate_codino_config` checks the values that would
otherwise fail deep inside training (query counts the encoder cannot supply, class counts that
disagree with the data set, a crop larger than the padded canvas) and names the key at fault.
"""
from __future__ import annotations

from detectron2.config import CfgNode as CN

__all__ = ["add_codino_config", "check_dataset_classes", "validate_codino_config"]


def add_codino_config(cfg: CN) -> None:
    """Add the MODEL.CODINO section (defaults = the official Co-DINO 5-scale head)."""
    c = cfg.MODEL.CODINO = CN()
    c.NUM_CLASSES = 7  # sigmoid classes (DWD: bus, bike, car, motor, person, rider, truck)
    c.HIDDEN_DIM = 256  # neck / transformer width
    c.GN_GROUPS = 32  # GroupNorm groups in the neck, ATSS tower and aux downsample
    c.NUM_QUERIES = 900  # matching queries (= two-stage proposals)
    c.ENC_LAYERS = 6
    # encoder layers (from the first; -1 = all) that recompute their activations in backward
    # instead of storing them: upstream Co-DINO `with_cp` (4 in co_dino_5scale_r50; SoMA: 0)
    c.ENCODER_CHECKPOINT = 0
    c.DEC_LAYERS = 6
    c.NUM_HEADS = 8
    c.NUM_POINTS = 4  # MSDA sampling points per head and level
    c.FFN_DIM = 2048
    c.ENC_POS_TEMPERATURE = 20.0  # SinePositionalEncoding temperature of the encoder
    c.DN_NUM_QUERIES = 100  # dynamic groups = max(1, DN_NUM_QUERIES // max #GT per image)
    c.DN_LABEL_NOISE = 0.5  # a DN label is re-drawn with probability DN_LABEL_NOISE / 2
    c.DN_BOX_NOISE = 1.0
    c.CLS_WEIGHT = 1.0  # QualityFocalLoss (beta 2)
    c.L1_WEIGHT = 5.0
    c.GIOU_WEIGHT = 2.0
    c.MATCH_CLS_COST = 2.0  # FocalLossCost (alpha 0.25, gamma 2)
    c.MATCH_L1_COST = 5.0
    c.MATCH_GIOU_COST = 2.0
    c.CROP_SIZE = 1024  # training crop (absolute_range); the canvas is INPUT.IMAGE_SIZE
    c.PAD_VALUE = 114.0  # canvas fill (both train and test)
    # collaborative auxiliary heads (Co-DETR): weights are nominal x DEC_LAYERS x LAMBDA = x12
    c.AUX_RCNN = True  # Faster R-CNN branch (RPN + 2fc RoI head)
    c.AUX_ATSS = True  # ATSS branch
    c.AUX_QUERIES = True  # customised positive queries of both heads through the decoder
    c.AUX_LOSS_SCALE = 12.0  # num_dec_layer (6) x loss_lambda (2)
    c.AUX_MAX_POS = 300  # max_pos_coords; N = max(9, min(AUX_MAX_POS, max #positives))
    c.RPN_PRE_NMS_TOPK = 4000
    c.RPN_POST_NMS_TOPK = 1000
    c.RPN_BATCH_PER_IMAGE = 256
    c.ROI_BATCH_PER_IMAGE = 512
    c.ROI_FC_DIM = 1024
    c.ATSS_TOPK = 9
    # test: DETR branch, last layer, flat top-k, class-aware linear soft-NMS
    c.TEST_TOPK = 300
    c.SOFT_NMS_IOU = 0.8
    c.SOFT_NMS_SIGMA = 0.5
    c.SOFT_NMS_MIN_SCORE = 1e-3


def _num_tokens(canvas: int, strides: list[int]) -> int:
    return sum((-(-canvas // s)) ** 2 for s in strides)


def validate_codino_config(cfg: CN) -> None:
    """Fail when the config is built, naming the key and value at fault (see the module doc);
    configs of other meta-architectures carry the defaults unchecked."""
    if cfg.MODEL.META_ARCHITECTURE != "SoMACoDINO":
        return
    c = cfg.MODEL.CODINO
    canvas = int(cfg.INPUT.IMAGE_SIZE)
    if int(c.CROP_SIZE) > canvas:
        raise ValueError(
            f"MODEL.CODINO.CROP_SIZE={c.CROP_SIZE} is larger than the padded canvas "
            f"INPUT.IMAGE_SIZE={canvas}: cropped images would not fit the canvas"
        )
    if len(cfg.MODEL.VIT.TAP_SCALES) != 4:
        raise ValueError(
            f"MODEL.VIT.TAP_SCALES={list(cfg.MODEL.VIT.TAP_SCALES)} must have 4 entries for Co-DINO"
        )
    if len(cfg.MODEL.VIT.OUT_INDICES) != 4:
        raise ValueError(
            f"MODEL.VIT.OUT_INDICES={list(cfg.MODEL.VIT.OUT_INDICES)} must name 4 blocks for "
            "Co-DINO (official: [7, 11, 15, 23])"
        )
    tokens = _num_tokens(canvas, [4, 8, 16, 32, 64])
    if not 1 <= int(c.NUM_QUERIES) <= tokens:
        raise ValueError(
            f"MODEL.CODINO.NUM_QUERIES={c.NUM_QUERIES} must be in [1, {tokens}]: the two-stage "
            f"selection picks them among the {tokens} encoder tokens of a {canvas}px canvas"
        )
    if not 0 <= int(c.DN_NUM_QUERIES) <= int(c.NUM_QUERIES):
        raise ValueError(
            f"MODEL.CODINO.DN_NUM_QUERIES={c.DN_NUM_QUERIES} must be in [0, NUM_QUERIES="
            f"{c.NUM_QUERIES}] (official: 100 for 900 queries)"
        )
    if not 0 <= float(c.DN_LABEL_NOISE) <= 1:
        raise ValueError(f"MODEL.CODINO.DN_LABEL_NOISE={c.DN_LABEL_NOISE} must be in [0, 1]")
    if not float(c.DN_BOX_NOISE) >= 0:
        raise ValueError(f"MODEL.CODINO.DN_BOX_NOISE={c.DN_BOX_NOISE} must be >= 0")
    if not 1 <= int(c.TEST_TOPK) <= int(c.NUM_QUERIES) * int(c.NUM_CLASSES):
        raise ValueError(
            f"MODEL.CODINO.TEST_TOPK={c.TEST_TOPK} must be in [1, NUM_QUERIES x NUM_CLASSES]"
        )
    hidden = int(c.HIDDEN_DIM)
    if hidden % int(c.NUM_HEADS) or hidden % int(c.GN_GROUPS) or hidden % 2:
        raise ValueError(
            f"MODEL.CODINO.HIDDEN_DIM={hidden} must be even and divisible by NUM_HEADS="
            f"{c.NUM_HEADS} and GN_GROUPS={c.GN_GROUPS}"
        )
    if int(c.ENC_LAYERS) < 1 or int(c.DEC_LAYERS) < 1:
        raise ValueError(
            f"MODEL.CODINO.ENC_LAYERS={c.ENC_LAYERS} / DEC_LAYERS={c.DEC_LAYERS} must be >= 1"
        )
    if not -1 <= int(c.ENCODER_CHECKPOINT) <= int(c.ENC_LAYERS):
        raise ValueError(
            f"MODEL.CODINO.ENCODER_CHECKPOINT={c.ENCODER_CHECKPOINT} must be in [-1, ENC_LAYERS="
            f"{c.ENC_LAYERS}]: the number of encoder layers checkpointed from the first, -1 = all"
        )


def check_dataset_classes(cfg: CN, dataset_classes: int | None) -> None:
    """MODEL.CODINO.NUM_CLASSES must equal the training set's class count (checked when the model
    is built: the data sets are registered only then)."""
    c = cfg.MODEL.CODINO
    if dataset_classes is not None and dataset_classes != int(c.NUM_CLASSES):
        raise ValueError(
            f"MODEL.CODINO.NUM_CLASSES={c.NUM_CLASSES} does not match DATASETS.TRAIN="
            f"{tuple(cfg.DATASETS.TRAIN)} which has {dataset_classes} thing_classes"
        )
