"""Config keys soma-d2 adds to Detectron2's yacs config.

Every key lives here with a one-line comment, so that `add_soma_config(get_cfg())` is the single
place a user reads to learn what a YAML file may set; unknown keys still fail as in Detectron2.
"""
from __future__ import annotations

import difflib
import importlib
import logging
import os
import re

import torch
from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg

from .project_registry import discover_projects
from .soma.config import BACKBONE_MODES as SOMA_MODES

VIT_ARCH_NAMES = ("vit_s", "vit_b", "vit_l", "vit_g")
DINOV3_ARCH_NAMES = ("vit_s", "vit_s_plus", "vit_b", "vit_l", "vit_h_plus")
VIT_FAMILIES = ("auto", "dinov2", "dinov3")


def add_soma_config(cfg: CN) -> CN:
    """Add soma-d2's keys (ViT, SoMA, pyramid, EMA, annealed weight decay, DG data) to `cfg`."""
    _c = cfg

    # ---- DINOv2 / DINOv3 ViT backbone ----------------------------------------------------------
    _c.MODEL.VIT = CN()
    # dinov2 | dinov3 | auto: "auto" takes the family of MODEL.SOMA.PRETRAINED's file (no absolute
    # position embedding = DINOv3; no file = DINOv2); a family that contradicts the file is an error
    _c.MODEL.VIT.FAMILY = "auto"
    # DINOv2: vit_s | vit_b | vit_l | vit_g; DINOv3: vit_s | vit_s_plus | vit_b | vit_l | vit_h_plus
    _c.MODEL.VIT.ARCH = "vit_l"
    _c.MODEL.VIT.EMBED_DIM = 0  # override the arch's width (0 = arch default); for tiny test models
    _c.MODEL.VIT.DEPTH = 0  # override the arch's number of blocks (0 = arch default)
    _c.MODEL.VIT.NUM_HEADS = 0  # override the arch's number of heads (0 = arch default)
    _c.MODEL.VIT.PATCH_SIZE = 16  # 14 = native DINOv2; 16 = kernel resampled (bicubic), strides 2^k
    _c.MODEL.VIT.IMG_SIZE = 1024  # training size the position embedding is interpolated to (DINOv2;
    # DINOv3 has none: its RoPE is computed from each input's own patch grid)
    _c.MODEL.VIT.OUT_INDICES = [23]  # blocks whose outputs feed the pyramid (1 or 4 entries)
    _c.MODEL.VIT.DROP_PATH_RATE = 0.0  # stochastic depth rate of the last block (linear ramp)
    _c.MODEL.VIT.NUM_REGISTERS = 0  # DINOv2 register tokens (4 for *_reg4 checkpoints); DINOv3: 0 =
    # the weight file's storage tokens (4 without a file)
    _c.MODEL.VIT.LAYER_SCALE_INIT = 1e-5  # layer-scale init when no pretrained weights are loaded
    # activation checkpointing: the first N trainable blocks (from MODEL.SOMA.START_BLOCK on; -1 =
    # all) keep only their input and recompute activations in backward (one more forward of each,
    # same losses and gradients). Frozen blocks run under no_grad and store nothing. 0 = off.
    _c.MODEL.VIT.CHECKPOINT_BLOCKS = 0
    _c.MODEL.VIT.USE_ACT_CHECKPOINT = False  # older switch: True = CHECKPOINT_BLOCKS -1
    # resize factors of the raw taps (build_soma_vit_taps_backbone, the heads in projects/), one per
    # OUT_INDICES entry: x4 / x2 / x1 / x0.5 = strides 4..32 at patch 16 (official feature forming)
    _c.MODEL.VIT.TAP_SCALES = [4.0, 2.0, 1.0, 0.5]

    # ---- SoMA adaptation ----------------------------------------------------------------------
    _c.MODEL.SOMA = CN()
    _c.MODEL.SOMA.MODE = "soma"  # soma | principal | lora | released | full_finetune | frozen
    _c.MODEL.SOMA.RANK = 16  # adapter rank r per target layer
    _c.MODEL.SOMA.ALPHA = 16.0  # scaling s = ALPHA / RANK (recipe: ALPHA = RANK, s = 1)
    # linear-layer name suffixes; DINOv3 SwiGLU sizes (vit_s_plus, vit_h_plus) name their FFN w1, w2, w3
    _c.MODEL.SOMA.TARGETS = ["q", "k", "v", "proj", "fc1", "fc2"]
    _c.MODEL.SOMA.START_BLOCK = 8  # blocks below are frozen entirely (domain-generalizable blocks)
    _c.MODEL.SOMA.PRETRAINED = ""  # DINOv2/v3 weights (official/timm/HF layout), loaded BEFORE SVD
    _c.MODEL.SOMA.BIAS = "adapted"  # none | adapted (target biases in adapted blocks) | all
    _c.MODEL.SOMA.EXTRA_TRAINABLE = ["mask_token"]  # further backbone params that train
    _c.MODEL.SOMA.DROPOUT = 0.0  # dropout on the adapter path
    _c.MODEL.SOMA.DECOMPOSITION_CACHE = True  # reuse decompositions under $SOMA_CACHE_DIR

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
    # photometric distortion: brightness, contrast, saturation (no hue or channel swap, which the
    # official pipelines also apply: Detectron2 has neither; project mappers may add them)
    _c.INPUT.PHOTOMETRIC = True

    _c.DATASETS.DWD_ROOT = ""  # Diverse Weather root ("" = $DETECTRON2_DATASETS/diverseWeather)
    _c.DATASETS.DWD_PREFIX = "dwd"  # registered names: <prefix>_daytime_clear_train, ...
    # robustness: also evaluate each test set under these corruptions ("benchmark" = the 15),
    # after the last iteration and with --eval-only (not at periodic evaluations)
    _c.DATASETS.TEST_CORRUPTIONS = ()
    _c.DATASETS.TEST_CORRUPTION_SEVERITIES = (1, 2, 3, 4, 5)  # severities of each corruption (1-5)
    _c.DATASETS.TEST_CORRUPTION_DIR = ""  # stored copies (tools/make_corrupted.py); "" = on the fly
    # your own domains, registered in every process before the model is built (README "Train and
    # evaluate on your own domains"): "voc:NAME:ROOT:SPLIT[:CLASSES][:DOMAIN]",
    # "coco:NAME:JSON:IMAGES[:DOMAIN]", "sem_seg:NAME:IMAGES:LABELS[:DOMAIN]"; CLASSES is
    # comma-separated names or a .txt file with one name per line (default: the 7 DWD classes)
    _c.DATASETS.REGISTER = []

    # ---- domain-generalization evaluation ------------------------------------------------------
    _c.TEST.DG = CN()
    _c.TEST.DG.RUN_NAME = ""  # row label of the DG table (default: the output dir's name)
    _c.TEST.DG.VOC_METRIC = "11point"  # 11point (VOC2007, the DWD protocol) | area

    # ---- semantic segmentation (SoMASemanticSegmentor, seg data sets) -------------------------
    _c.MODEL.SEM_SEG_INFERENCE = CN()
    _c.MODEL.SEM_SEG_INFERENCE.MODE = "whole"  # whole (one pass) | slide (overlapping windows)
    _c.MODEL.SEM_SEG_INFERENCE.CROP_SIZE = (512, 512)  # (h, w) of a slide window
    _c.MODEL.SEM_SEG_INFERENCE.STRIDE = (341, 341)  # (h, w) step between slide windows (<= crop)
    _c.MODEL.SEM_SEG_INFERENCE.CROP_BATCH = 8  # slide windows per forward pass (memory vs speed)
    _c.MODEL.SEM_SEG_INFERENCE.FLIP = False  # test-time augmentation: add the mirrored image
    _c.MODEL.SEM_SEG_INFERENCE.SCALES = [1.0]  # test-time augmentation: image scales (softmax mean)
    _c.INPUT.SEM_SEG_RESIZE = (2048, 512)  # (long, short) base size of the random resize (mmseg)
    _c.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA = 1.0  # max share of one class in a seg crop (1 = off)
    _c.DATASETS.SYNTHETIC_SEG_ROOT = ""  # synthetic seg data ("" = <D2 datasets>/synthetic_semseg)
    _c.DATASETS.SYNTHETIC_SEG_PREFIX = "synseg"  # names: <prefix>_daytime_clear_train, ...
    _c.INPUT.DATASET_MAPPER_NAME = ""  # registered input pipeline ("" = built-in det / seg mapper)

    add_project_configs(cfg)
    return cfg


def add_project_configs(cfg: CN) -> None:
    """Add the keys of every installed project (entry points ``soma_d2.projects``, see
    `soma_d2.project_registry`) to `cfg`: MODEL.CODINO, MODEL.MASK2FORMER, ..."""
    for project in discover_projects():
        project.add_config(cfg)


def validate_project_configs(cfg: CN) -> None:
    """Run every installed project's `validate_config` on the merged `cfg`."""
    for project in discover_projects():
        if project.validate_config is not None:
            project.validate_config(cfg)


_CHOICES = {
    "MODEL.SOMA.MODE": SOMA_MODES,
    "MODEL.VIT.ARCH": tuple(dict.fromkeys(VIT_ARCH_NAMES + DINOV3_ARCH_NAMES)),
    "MODEL.VIT.FAMILY": VIT_FAMILIES,
    "MODEL.SOMA.BIAS": ("none", "adapted", "all"),
    "SOLVER.OPTIMIZER": ("AdamW", "SGD"),
    "SOLVER.WEIGHT_DECAY_SCHEDULE": ("constant", "cosine", "linear"),
    "SOLVER.AMP.DTYPE": ("bfloat16", "float16"),
    "TEST.DG.VOC_METRIC": ("11point", "area"),
    "MODEL.VIT.PATCH_SIZE": (14, 16),
    "MODEL.SEM_SEG_INFERENCE.MODE": ("whole", "slide"),
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
    family, arch = cfg.MODEL.VIT.FAMILY, cfg.MODEL.VIT.ARCH
    sizes = {"dinov2": VIT_ARCH_NAMES, "dinov3": DINOV3_ARCH_NAMES}.get(family)
    if sizes is not None and arch not in sizes:
        raise ValueError(f"MODEL.VIT.ARCH={arch!r} is not a {family} size "
                         f"(MODEL.VIT.FAMILY={family!r}); accepted: {list(sizes)}")
    soma = cfg.MODEL.SOMA
    if int(soma.RANK) <= 0:
        raise ValueError(f"MODEL.SOMA.RANK={soma.RANK} must be a positive integer")
    if float(soma.ALPHA) <= 0:
        raise ValueError(f"MODEL.SOMA.ALPHA={soma.ALPHA} must be positive (recipe: ALPHA = RANK)")
    if not list(soma.TARGETS):
        raise ValueError("MODEL.SOMA.TARGETS is empty; e.g. ['q', 'k', 'v', 'proj', 'fc1', 'fc2']")
    if not 0 <= float(soma.DROPOUT) < 1:
        raise ValueError(f"MODEL.SOMA.DROPOUT={soma.DROPOUT} must be in [0, 1)")
    vit = cfg.MODEL.VIT
    if int(vit.CHECKPOINT_BLOCKS) < -1:
        raise ValueError(f"MODEL.VIT.CHECKPOINT_BLOCKS={vit.CHECKPOINT_BLOCKS} must be -1 (all "
                         "trainable blocks), 0 (off) or a positive count")
    if vit.USE_ACT_CHECKPOINT and int(vit.CHECKPOINT_BLOCKS) not in (0, -1):
        raise ValueError(f"MODEL.VIT.USE_ACT_CHECKPOINT=True (all trainable blocks) contradicts "
                         f"MODEL.VIT.CHECKPOINT_BLOCKS={vit.CHECKPOINT_BLOCKS}; set only one")
    if cfg.MODEL.VIT.IMG_SIZE % cfg.MODEL.VIT.PATCH_SIZE:
        raise ValueError(
            f"MODEL.VIT.IMG_SIZE={cfg.MODEL.VIT.IMG_SIZE} is not a multiple of "
            f"MODEL.VIT.PATCH_SIZE={cfg.MODEL.VIT.PATCH_SIZE}"
        )
    if not float(cfg.SOLVER.WEIGHT_DECAY_END) >= 0:
        raise ValueError(f"SOLVER.WEIGHT_DECAY_END={cfg.SOLVER.WEIGHT_DECAY_END} must be >= 0")
    if cfg.MODEL.EMA.ENABLED and not 0 < float(cfg.MODEL.EMA.DECAY) < 1:
        raise ValueError(f"MODEL.EMA.DECAY={cfg.MODEL.EMA.DECAY} must be in (0, 1)")
    _validate_semseg_config(cfg)
    if cfg.DATASETS.TEST_CORRUPTIONS:
        from .data.corruptions import resolve_corruptions, resolve_severities

        resolve_corruptions(cfg.DATASETS.TEST_CORRUPTIONS)
        resolve_severities(cfg.DATASETS.TEST_CORRUPTION_SEVERITIES)
        if cfg.DATASETS.TEST_CORRUPTION_DIR and not os.path.isdir(cfg.DATASETS.TEST_CORRUPTION_DIR):
            raise FileNotFoundError(f"DATASETS.TEST_CORRUPTION_DIR={cfg.DATASETS.TEST_CORRUPTION_DIR!r} "
                                    "is not a directory (write it with tools/make_corrupted.py)")
    from .data.catalog_entries import parse_dataset_entries

    parse_dataset_entries(list(cfg.DATASETS.REGISTER))
    validate_project_configs(cfg)


def _pair_of_positive_ints(cfg: CN, key: str) -> None:
    value = _get(cfg, key)
    if len(value) != 2 or any(int(v) != v or v <= 0 for v in value):
        raise ValueError(f"{key}={tuple(value)} must be two positive integers (h, w)")


def _validate_semseg_config(cfg: CN) -> None:
    """Value checks of the semantic-segmentation keys (inference mode, windows, TTA, resize)."""
    inf = cfg.MODEL.SEM_SEG_INFERENCE
    _pair_of_positive_ints(cfg, "MODEL.SEM_SEG_INFERENCE.CROP_SIZE")
    _pair_of_positive_ints(cfg, "MODEL.SEM_SEG_INFERENCE.STRIDE")
    if any(s > c for s, c in zip(inf.STRIDE, inf.CROP_SIZE)):
        raise ValueError(
            f"MODEL.SEM_SEG_INFERENCE.STRIDE={tuple(inf.STRIDE)} exceeds CROP_SIZE="
            f"{tuple(inf.CROP_SIZE)}: slide windows would leave pixels unpredicted"
        )
    if int(inf.CROP_BATCH) < 1:
        raise ValueError(f"MODEL.SEM_SEG_INFERENCE.CROP_BATCH={inf.CROP_BATCH} must be >= 1")
    if not list(inf.SCALES) or any(float(s) <= 0 for s in inf.SCALES):
        raise ValueError(
            f"MODEL.SEM_SEG_INFERENCE.SCALES={list(inf.SCALES)} must be a non-empty list of "
            "positive factors (e.g. [1.0] or [0.75, 1.0, 1.25])"
        )
    _pair_of_positive_ints(cfg, "INPUT.SEM_SEG_RESIZE")
    if not 0 < float(cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA) <= 1:
        raise ValueError(
            f"INPUT.CROP.SINGLE_CATEGORY_MAX_AREA={cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA} must "
            "be in (0, 1] (recipe: 0.75; 1.0 disables the constraint)"
        )


class UnknownConfigKeyError(KeyError):
    """A YAML file or override names a key that neither Detectron2 nor soma-d2 defines."""

    def __str__(self) -> str:
        return str(self.args[0])


def _all_keys(node: CN, prefix: str = "") -> list[str]:
    keys = []
    for k, v in node.items():
        keys += _all_keys(v, f"{prefix}{k}.") if isinstance(v, CN) else [prefix + k]
    return keys


def _raise_unknown_key(cfg: CN, error: BaseException, source: str) -> None:
    """Re-raise yacs' "Non-existent key" with close matches and the section's keys."""
    match = re.search(r"Non-existent (?:config )?key: ([\w.]+)", str(error))
    if match is None:
        raise error
    key = match.group(1)
    known = _all_keys(cfg)
    parent = key.rpartition(".")[0]
    close = difflib.get_close_matches(key, known, n=3, cutoff=0.75)
    siblings = sorted(k for k in known if k.rpartition(".")[0] == parent)
    hint = f"did you mean {close}? " if close else ""
    if not discover_projects():
        hint += ("no soma-d2 project is installed (entry points 'soma_d2.projects'), so no "
                 "project keys exist: run pip install -e . in the repository; ")
    if siblings:
        where = f"keys under {parent}: {siblings}" if parent else f"top-level keys: {siblings}"
    else:
        where = f"{parent} is not a config section"
    raise UnknownConfigKeyError(f"{source}: unknown config key {key}; {hint}{where}") from error


def build_cfg(config_file: str = "", opts: list[str] | None = None) -> CN:
    """Detectron2 config + soma-d2 keys, merged with a YAML file and overrides, then validated."""
    cfg = get_cfg()
    add_soma_config(cfg)
    if config_file:
        if not os.path.isfile(config_file):
            raise FileNotFoundError(f"--config-file {config_file!r} does not exist")
        try:
            cfg.merge_from_file(config_file)
        except (KeyError, AssertionError) as e:
            _raise_unknown_key(cfg, e, config_file)
    try:
        cfg.merge_from_list(list(opts or []))
    except (KeyError, AssertionError) as e:
        _raise_unknown_key(cfg, e, "command-line override")
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logging.getLogger("soma_d2").warning("No CUDA device: using MODEL.DEVICE cpu")
        cfg.MODEL.DEVICE = "cpu"
    validate_soma_config(cfg)
    return cfg


def _register_components() -> None:
    """Import the modules whose import fills Detectron2's registries (backbones, segmentor,
    mappers) and load the installed projects (`discover_projects`), so that `build_model(cfg)`
    works after importing this module alone, as with Detectron2's own projects. Run last: every
    name above is defined, so a project importing from here while this module initialises finds
    what it needs.
    """
    importlib.import_module("soma_d2.modeling")
    importlib.import_module("soma_d2.data.mapper_registry")
    discover_projects()


_register_components()
