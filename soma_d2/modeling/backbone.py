"""Detectron2 backbone: DINOv2 ViT (pretrained weights loaded first) + SoMA + feature pyramid.

The order of operations is the point of this module. Detectron2 builds the model before
`DetectionCheckpointer` loads `MODEL.WEIGHTS`, so a SoMA decomposition done in a constructor would
decompose random weights. Here the builder loads the foundation-model weights itself
(`MODEL.SOMA.PRETRAINED`), then decomposes, then freezes; `MODEL.WEIGHTS` later only restores a
full soma-d2 checkpoint (residuals + factors) of the same structure.
"""
from __future__ import annotations

import logging

import torch
from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from detectron2.modeling.backbone.fpn import LastLevelMaxPool
from detectron2.modeling.backbone.vit import SimpleFeaturePyramid

from ..checkpoint import load_dinov2_weights
from ..soma import DecompositionCache, SoMAConfig, SoMAReport, inject_soma
from ..soma.config import BACKBONE_MODES, MODE_TO_INIT
from ..utils.paths import resolve_repo_path
from .dinov3_backbone import DinoV3BackboneNet, build_dinov3_net, resolve_vit_family
from .vit import VIT_ARCHS, DinoVisionTransformer
from .weight_fit import check_state_fit

logger = logging.getLogger(__name__)

__all__ = [
    "DinoViTBackboneNet",
    "MultiLevelFeaturePyramid",
    "build_soma_vit",
    "build_soma_vit_backbone",
    "apply_soma_mode",
]


class DinoViTBackboneNet(DinoVisionTransformer, Backbone):
    """The DINOv2 ViT seen as a Detectron2 `Backbone`: one feature map per `out_indices` entry."""

    def output_shape(self) -> dict[str, ShapeSpec]:
        return {
            f"block{i}": ShapeSpec(channels=self.embed_dim, stride=self.patch_size)
            for i in self.out_indices
        }


class MultiLevelFeaturePyramid(SimpleFeaturePyramid):
    """SimpleFeaturePyramid whose levels read different ViT blocks (official out_indices 7/11/15/23).

    Level k (highest resolution first) is built from block `in_features[k]`; with one entry it is
    exactly Detectron2's ViTDet SimpleFeaturePyramid.
    """

    def __init__(self, net: Backbone, in_features: list[str], **kwargs):
        super().__init__(net, in_features[-1], **kwargs)
        if len(in_features) != len(self.stages):
            raise ValueError(
                f"MODEL.VIT.OUT_INDICES has {len(in_features)} entries but "
                f"MODEL.PYRAMID.SCALE_FACTORS has {len(self.stages)}; give one block per level "
                "or a single block for all levels"
            )
        self.in_features = list(in_features)

    @property
    def size_divisibility(self) -> int:
        return self._size_divisibility

    @property
    def padding_constraints(self) -> dict[str, int]:
        # Detectron2's SimpleFeaturePyramid misspells "size_divisibility" here, so ImageList never
        # padded inputs to a multiple of the coarsest stride; spelled right, it does.
        return {"size_divisibility": self._size_divisibility, "square_size": self._square_pad}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        bottom_up = self.net(x)
        results = [stage(bottom_up[f]) for f, stage in zip(self.in_features, self.stages)]
        if self.top_block is not None:
            results.extend(self.top_block(results[-1]))
        return dict(zip(self._out_features, results))


def _vit_kwargs(cfg: CfgNode) -> dict:
    v = cfg.MODEL.VIT
    if v.ARCH not in VIT_ARCHS:
        raise ValueError(
            f"MODEL.VIT.ARCH={v.ARCH!r} is not a known DINOv2 size; accepted: {sorted(VIT_ARCHS)}"
        )
    kwargs = dict(VIT_ARCHS[v.ARCH])
    for key, field in (("embed_dim", "EMBED_DIM"), ("depth", "DEPTH"), ("num_heads", "NUM_HEADS")):
        value = getattr(v, field)
        if value:
            kwargs[key] = int(value)
    depth = kwargs["depth"]
    out_indices = [int(i) for i in v.OUT_INDICES]
    bad = [i for i in out_indices if not 0 <= i < depth]
    if not out_indices or bad:
        raise ValueError(
            f"MODEL.VIT.OUT_INDICES={list(v.OUT_INDICES)} must name blocks in [0, {depth - 1}] "
            f"for {v.ARCH} with depth {depth}"
        )
    start_block = cfg.MODEL.SOMA.START_BLOCK
    if not 0 <= start_block < depth:
        raise ValueError(
            f"MODEL.SOMA.START_BLOCK={start_block} is outside [0, {depth - 1}] "
            f"(the ViT has {depth} blocks)"
        )
    mode = cfg.MODEL.SOMA.MODE
    frozen_blocks = depth if mode == "frozen" else (0 if mode == "full_finetune" else start_block)
    kwargs.update(
        img_size=cfg.MODEL.VIT.IMG_SIZE,
        patch_size=cfg.MODEL.VIT.PATCH_SIZE,
        num_register_tokens=cfg.MODEL.VIT.NUM_REGISTERS,
        drop_path_rate=cfg.MODEL.VIT.DROP_PATH_RATE,
        layer_scale_init=cfg.MODEL.VIT.LAYER_SCALE_INIT,
        out_indices=tuple(out_indices),
        frozen_blocks=frozen_blocks,
        checkpoint_blocks=-1 if cfg.MODEL.VIT.USE_ACT_CHECKPOINT else v.CHECKPOINT_BLOCKS,
    )
    trainable = depth - frozen_blocks
    if not -1 <= int(kwargs["checkpoint_blocks"]) <= trainable:
        raise ValueError(
            f"MODEL.VIT.CHECKPOINT_BLOCKS={v.CHECKPOINT_BLOCKS} exceeds the {trainable} trainable "
            f"blocks of MODEL.SOMA.MODE={mode!r} (START_BLOCK={start_block} of {depth}); "
            "-1 checkpoints all of them"
        )
    return kwargs


def apply_soma_mode(vit: torch.nn.Module, cfg: CfgNode) -> SoMAReport | None:
    """Adapt (or freeze / unfreeze) an already-loaded ViT according to `MODEL.SOMA.MODE`."""
    soma = cfg.MODEL.SOMA
    mode = soma.MODE
    if mode in MODE_TO_INIT:
        config = SoMAConfig(
            rank=int(soma.RANK),
            alpha=float(soma.ALPHA),
            target_modules=list(soma.TARGETS),
            init=MODE_TO_INIT[mode],
            start_block=int(soma.START_BLOCK),
            bias=soma.BIAS,
            extra_trainable=list(soma.EXTRA_TRAINABLE),
            dropout=float(soma.DROPOUT),
        )
        try:
            cache = DecompositionCache() if soma.DECOMPOSITION_CACHE else None
            return inject_soma(vit, config, cache=cache)
        except ValueError as e:
            key = ("MODEL.SOMA.RANK" if "rank" in str(e) else
                   "MODEL.SOMA.TARGETS" if "target_modules" in str(e) else "MODEL.SOMA")
            raise ValueError(
                f"{key} does not fit this ViT (MODEL.SOMA.RANK={soma.RANK}, TARGETS="
                f"{list(soma.TARGETS)}, START_BLOCK={soma.START_BLOCK}; width "
                f"{vit.embed_dim}, depth {len(vit.blocks)}): {e}"
            ) from e
    if mode == "full_finetune":
        for p in vit.parameters():
            p.requires_grad_(True)
        return None
    if mode == "frozen":
        for p in vit.parameters():
            p.requires_grad_(False)
        return None
    raise ValueError(
        f"MODEL.SOMA.MODE={mode!r} is not supported; accepted: "
        f"{list(BACKBONE_MODES)}"
    )


def _assign_pretrained(vit: torch.nn.Module, state: dict[str, torch.Tensor], path: str,
                       arch: str) -> None:
    """Make the loaded tensors the parameters of the meta-device `vit` (in the parameters' dtype);
    the mask token, which some files lack, starts at zero (its DINOv2 initialisation)."""
    params = dict(vit.named_parameters())
    state = {k: v.to(params[k].dtype) if k in params else v for k, v in state.items()}
    incompatible = vit.load_state_dict(state, strict=False, assign=True)
    check_state_fit(incompatible, path, arch)
    if vit.mask_token.is_meta:
        vit.mask_token = torch.nn.Parameter(torch.zeros_like(vit.mask_token, device="cpu"))
    left = [n for n, p in vit.named_parameters() if p.is_meta]
    if left:
        raise ValueError(f"MODEL.SOMA.PRETRAINED={path!r}: no values for {left[:8]}")


def _build_dinov2_net(cfg: CfgNode) -> DinoViTBackboneNet:
    """The DINOv2 ViT of ``MODEL.VIT`` with ``MODEL.SOMA.PRETRAINED`` loaded (no SoMA yet).

    With pretrained weights the ViT is built on the meta device and takes the loaded tensors as
    its parameters (`load_state_dict(assign=True)`): its random initialisation (the truncated
    normal draws of 300M parameters for ViT-L, seconds on CPU) would be overwritten anyway, and
    no second copy of the weights is made.
    """
    path = resolve_repo_path(cfg.MODEL.SOMA.PRETRAINED)  # repo-relative names work from anywhere
    if not path:
        return DinoViTBackboneNet(**_vit_kwargs(cfg))
    state = load_dinov2_weights(
        path, patch_size=cfg.MODEL.VIT.PATCH_SIZE, image_size=cfg.MODEL.VIT.IMG_SIZE
    )
    with torch.device("meta"):
        vit = DinoViTBackboneNet(**_vit_kwargs(cfg))
    _assign_pretrained(vit, state, path, cfg.MODEL.VIT.ARCH)
    logger.info("Loaded DINOv2 weights from %s before the SoMA decomposition", path)
    return vit


def build_soma_vit(cfg: CfgNode) -> DinoViTBackboneNet | DinoV3BackboneNet:
    """Build the ViT of ``MODEL.VIT.FAMILY``, load `MODEL.SOMA.PRETRAINED`, then apply the SoMA
    mode (in that order)."""
    if resolve_vit_family(cfg) == "dinov3":
        vit = build_dinov3_net(cfg)
    else:
        vit = _build_dinov2_net(cfg)
    if not cfg.MODEL.SOMA.PRETRAINED and cfg.MODEL.SOMA.MODE in ("soma", "principal"):
        logger.warning(
            "MODEL.SOMA.PRETRAINED is empty: decomposing a randomly initialised ViT. This is only "
            "meaningful for tests and the synthetic demo."
        )
    report = apply_soma_mode(vit, cfg)
    if report is not None:
        logger.info("SoMA injection (MODEL.SOMA.MODE=%s):\n%s", cfg.MODEL.SOMA.MODE, report)
    vit.soma_report = report
    return vit


@BACKBONE_REGISTRY.register()
def build_soma_vit_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> Backbone:
    """Registered builder: SoMA-adapted DINOv2 ViT (`.net`) under a ViTDet-style pyramid."""
    patch = cfg.MODEL.VIT.PATCH_SIZE
    if patch & (patch - 1):
        raise ValueError(
            f"MODEL.VIT.PATCH_SIZE={patch} gives feature strides that are not powers of two, which "
            "the feature pyramid needs; use 16 (the 14x14 DINOv2 kernel is resampled on loading)"
        )
    vit = build_soma_vit(cfg)
    in_features = [f"block{i}" for i in cfg.MODEL.VIT.OUT_INDICES]
    if len(in_features) == 1:
        in_features = in_features * len(cfg.MODEL.PYRAMID.SCALE_FACTORS)
    top_block = None
    if cfg.MODEL.PYRAMID.TOP_BLOCK:
        scales = cfg.MODEL.PYRAMID.SCALE_FACTORS
        last = int(torch.tensor(vit.patch_size / min(scales)).log2().item())
        top_block = LastLevelMaxPool()
        top_block.in_feature = f"p{last}"
    return MultiLevelFeaturePyramid(
        vit,
        in_features,
        out_channels=cfg.MODEL.PYRAMID.OUT_CHANNELS,
        scale_factors=tuple(cfg.MODEL.PYRAMID.SCALE_FACTORS),
        top_block=top_block,
        norm=cfg.MODEL.PYRAMID.NORM,
        square_pad=cfg.MODEL.PYRAMID.SQUARE_PAD,
    )
