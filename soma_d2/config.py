"""Config keys soma-d2 adds to Detectron2's yacs config.

Every key lives here with a one-line comment, so that `add_soma_config(get_cfg())` is the single
place a user reads to learn what a YAML file may set; unknown keys still fail as in Detectron2.
"""
from __future__ import annotations

import logging
import os

import torch
from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg

SOMA_MODES = ("soma", "principal", "lora", "released", "full_finetune", "frozen")
VIT_ARCH_NAMES = ("vit_s", "vit_b", "vit_l", "vit_g")


def add_soma_config(cfg: CN) -> CN:
    """Add soma-d2's keys (ViT, SoMA, pyramid, EMA, annealed weight decay, DG data) to `cfg`."""
    _c = cfg

    # ---- DINOv2 ViT backbone ------------------------------------------------------------------
    _c.MODEL.VIT = CN()
    _c.MODEL.VIT.ARCH = "vit_l"  # one of vit_s | vit_b | vit_l | vit_g (DINOv2 sizes)
    _c.MODEL.VIT.EMBED_DIM = 0  # override the arch's width (0 = arch default); for tiny test models
    _c.MODEL.VIT.DEPTH = 0  # override the arch's number of blocks (0 = arch default)
    _c.MODEL.VIT.NUM_HEADS = 0  # override the arch's number of heads (0 = arch default)
    _c.MODEL.VIT.PATCH_SIZE = 16  # 14 = native DINOv2; 16 = kernel resampled (bicubic), strides 2^k
    _c.MODEL.VIT.IMG_SIZE = 1024  # training size the position embedding is interpolated to
    _c.MODEL.VIT.OUT_INDICES = [23]  # blocks whose outputs feed the pyramid (1 or 4 entries)
    _c.MODEL.VIT.DROP_PATH_RATE = 0.0  # stochastic depth rate of the last block (linear ramp)
    _c.MODEL.VIT.NUM_REGISTERS = 0  # DINOv2 register tokens (4 for *_reg4 checkpoints)
    _c.MODEL.VIT.LAYER_SCALE_INIT = 1e-5  # layer-scale init when no pretrained weights are loaded
    _c.MODEL.VIT.USE_ACT_CHECKPOINT = False  # activation checkpointing of the trainable blocks

    # ---- SoMA adaptation ----------------------------------------------------------------------
    _c.MODEL.SOMA = CN()
    _c.MODEL.SOMA.MODE = "soma"  # soma | principal | lora | released | full_finetune | frozen
    _c.MODEL.SOMA.RANK = 16  # adapter rank r per target layer
    _c.MODEL.SOMA.ALPHA = 16.0  # scaling s = ALPHA / RANK (recipe: ALPHA = RANK, s = 1)
    _c.MODEL.SOMA.TARGETS = ["q", "k", "v", "proj", "fc1", "fc2"]  # linear-layer name suffixes
    _c.MODEL.SOMA.START_BLOCK = 8  # blocks below are frozen entirely (domain-generalizable blocks)
    _c.MODEL.SOMA.PRETRAINED = ""  # DINOv2 weights (official/timm/HF layout), loaded BEFORE SVD
    _c.MODEL.SOMA.BIAS = "adapted"  # none | adapted (target biases in adapted blocks) | all
    _c.MODEL.SOMA.EXTRA_TRAINABLE = ["mask_token"]  # further backbone params that train
    _c.MODEL.SOMA.DROPOUT = 0.0  # dropout on the adapter path

    # ---- feature pyramid (ViTDet-style SimpleFeaturePyramid) -----------------------------------
    _c.MODEL.PYRAMID = CN()
    _c.MODEL.PYRAMID.OUT_CHANNELS = 256  # channels of every pyramid level
    _c.MODEL.PYRAMID.SCALE_FACTORS = [4.0, 2.0, 1.0, 0.5]  # relative to the ViT stride
    _c.MODEL.PYRAMID.NORM = "LN"  # norm of the pyramid convs ("", "LN", "BN", "GN", ...)
    _c.MODEL.PYRAMID.TOP_BLOCK = True  # add a max-pooled p6 level (needed by RPN on 5 levels)
    _c.MODEL.PYRAMID.SQUARE_PAD = 0  # pad inputs to a square of this size (0 = no padding)

    # mask_token trains (official recipe) but detection never uses it: DDP must allow unused params
    _c.MODEL.DDP_FIND_UNUSED_PARAMETERS = True

    # ---- EMA of trainable weights -------------------------------------------------------------
    _c.MODEL.EMA = CN()
    _c.MODEL.EMA.ENABLED = False  # keep an EMA of the trainable weights; evaluation uses it
    _c.MODEL.EMA.START_ITER = 0  # first iteration that updates the EMA (recipe: 12000 for seg)
    _c.MODEL.EMA.DECAY = 0.9999  # EMA decay per iteration

    # ---- optimizer ----------------------------------------------------------------------------
    _c.SOLVER.OPTIMIZER = "AdamW"  # AdamW | SGD
    _c.SOLVER.BETAS = (0.9, 0.999)  # AdamW betas
    _c.SOLVER.EPS = 1e-8  # AdamW eps
    _c.SOLVER.BACKBONE_LR_MULT = 0.5  # lr multiplier of backbone.net parameters
    _c.SOLVER.BACKBONE_WD_MULT = 0.2  # weight-decay multiplier of backbone.net parameters
    # names (substrings) that get no weight decay, on top of norms and position/cls/register/mask
    _c.SOLVER.NO_DECAY_PATTERNS = ["query_embed", "level_embed"]
    # ordered [pattern, lr_mult, decay_mult] rules; the longest matching pattern wins
    _c.SOLVER.CUSTOM_RULES = []
    _c.SOLVER.WEIGHT_DECAY_SCHEDULE = "cosine"  # constant | cosine | linear (annealed decay)
    _c.SOLVER.WEIGHT_DECAY_END = 1e-5  # decay every non-zero group reaches at MAX_ITER
    _c.SOLVER.POLY_POWER = 0.9  # power of WarmupPolyLR
    _c.SOLVER.AMP.DTYPE = "bfloat16"  # bfloat16 | float16 (AMP on GPU only)
    _c.SOLVER.LOG_PERIOD = 20  # iterations between console / metrics.json / TensorBoard writes

    # ---- data ---------------------------------------------------------------------------------
    _c.DATALOADER.SKIP_BAD_IMAGES = False  # skip (and count) undecodable images instead of failing
    _c.INPUT.RANDOM_SCALE = (0.1, 2.0)  # large-scale jitter range of the detection recipe
    _c.INPUT.IMAGE_SIZE = 1024  # target size of the resize-and-crop augmentation
    _c.INPUT.PHOTOMETRIC = True  # photometric distortion (brightness/contrast/saturation/hue)

    _c.DATASETS.DWD_ROOT = ""  # Diverse Weather root ("" = $DETECTRON2_DATASETS/diverseWeather)
    _c.DATASETS.DWD_PREFIX = "dwd"  # registered names: <prefix>_daytime_clear_train, ...

    # ---- domain-generalization evaluation ------------------------------------------------------
    _c.TEST.DG = CN()
    _c.TEST.DG.RUN_NAME = ""  # row label of the DG table (default: the output dir's name)
    _c.TEST.DG.VOC_METRIC = "11point"  # 11point (VOC2007, the DWD protocol) | area
    return cfg


_CHOICES = {
    "MODEL.SOMA.MODE": SOMA_MODES,
    "MODEL.VIT.ARCH": VIT_ARCH_NAMES,
    "MODEL.SOMA.BIAS": ("none", "adapted", "all"),
    "SOLVER.OPTIMIZER": ("AdamW", "SGD"),
    "SOLVER.WEIGHT_DECAY_SCHEDULE": ("constant", "cosine", "linear"),
    "SOLVER.AMP.DTYPE": ("bfloat16", "float16"),
    "TEST.DG.VOC_METRIC": ("11point", "area"),
}


def _get(cfg: CN, key: str):
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def validate_soma_config(cfg: CN) -> None:
    """Check soma-d2's keys before anything is built; errors name the key and accepted values.

    yacs already rejects unknown keys and wrong types; this adds value checks (choices, ranges)
    that would otherwise surface deep inside model building or, worse, only at the end of training.
    """
    for key, choices in _CHOICES.items():
        value = _get(cfg, key)
        if value not in choices:
            raise ValueError(f"{key}={value!r} is not supported; accepted values: {list(choices)}")
    soma = cfg.MODEL.SOMA
    if int(soma.RANK) <= 0:
        raise ValueError(f"MODEL.SOMA.RANK={soma.RANK} must be a positive integer")
    if float(soma.ALPHA) <= 0:
        raise ValueError(f"MODEL.SOMA.ALPHA={soma.ALPHA} must be positive (recipe: ALPHA = RANK)")
    if not list(soma.TARGETS):
        raise ValueError("MODEL.SOMA.TARGETS is empty; e.g. ['q', 'k', 'v', 'proj', 'fc1', 'fc2']")
    if not 0 <= float(soma.DROPOUT) < 1:
        raise ValueError(f"MODEL.SOMA.DROPOUT={soma.DROPOUT} must be in [0, 1)")
    if cfg.MODEL.VIT.PATCH_SIZE not in (14, 16):
        raise ValueError(f"MODEL.VIT.PATCH_SIZE={cfg.MODEL.VIT.PATCH_SIZE}; accepted: 14, 16")
    if cfg.MODEL.VIT.IMG_SIZE % cfg.MODEL.VIT.PATCH_SIZE:
        raise ValueError(
            f"MODEL.VIT.IMG_SIZE={cfg.MODEL.VIT.IMG_SIZE} is not a multiple of "
            f"MODEL.VIT.PATCH_SIZE={cfg.MODEL.VIT.PATCH_SIZE}"
        )
    if not float(cfg.SOLVER.WEIGHT_DECAY_END) >= 0:
        raise ValueError(f"SOLVER.WEIGHT_DECAY_END={cfg.SOLVER.WEIGHT_DECAY_END} must be >= 0")
    if cfg.MODEL.EMA.ENABLED and not 0 < float(cfg.MODEL.EMA.DECAY) < 1:
        raise ValueError(f"MODEL.EMA.DECAY={cfg.MODEL.EMA.DECAY} must be in (0, 1)")


def build_cfg(config_file: str = "", opts: list[str] | None = None) -> CN:
    """Detectron2 config + soma-d2 keys, merged with a YAML file and overrides, then validated."""
    cfg = get_cfg()
    add_soma_config(cfg)
    if config_file:
        if not os.path.isfile(config_file):
            raise FileNotFoundError(f"--config-file {config_file!r} does not exist")
        cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts or []))
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logging.getLogger("soma_d2").warning("No CUDA device: using MODEL.DEVICE cpu")
        cfg.MODEL.DEVICE = "cpu"
    validate_soma_config(cfg)
    return cfg
