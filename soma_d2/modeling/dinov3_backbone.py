"""The DINOv3 family behind the SoMA backbone: which family a config means, and its loaded ViT.

``MODEL.VIT.FAMILY`` is "dinov2", "dinov3" or "auto" (the family of the file in
``MODEL.SOMA.PRETRAINED``: a ViT without an absolute position embedding is DINOv3; no file means
DINOv2). The family is read from the file's key names only (safetensors header, or a memory-mapped
``torch.load``), so choosing it costs no second read of a large checkpoint. The DINOv3 ViT is built
from ``MODEL.VIT`` (size) and the file (storage tokens, biases, FFN kind and width, RoPE schedule),
loaded strictly, and returned before any SoMA decomposition, as the DINOv2 path does.
"""
from __future__ import annotations

import logging
import os

import torch
from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec
from detectron2.modeling import Backbone

from ..checkpoint.dinov2.weight_file import _unwrap, read_weight_file
from ..checkpoint.dinov3 import convert_dinov3_state_dict, detect_vit_family
from ..checkpoint.safe_load import torch_load_weights
from ..soma.config import SoMAConfig
from ..utils.paths import resolve_repo_path
from .dinov3 import DINOV3_ARCHS, DinoV3VisionTransformer
from .weight_fit import check_state_fit

logger = logging.getLogger(__name__)

__all__ = ["VIT_FAMILIES", "DinoV3BackboneNet", "build_dinov3_net", "resolve_vit_family",
           "weight_file_family"]

VIT_FAMILIES = ("auto", "dinov2", "dinov3")
# taken from the weight file when one is loaded (the file knows them; MODEL.VIT does not say)
_FROM_FILE = ("qkv_bias", "key_bias", "ffn_layer", "ffn_hidden_dim", "layer_scale_init",
              "num_register_tokens", "rope_base", "rope_min_period", "rope_max_period", "in_chans")


class DinoV3BackboneNet(DinoV3VisionTransformer, Backbone):
    """The DINOv3 ViT seen as a Detectron2 `Backbone`: one feature map per `out_indices` entry."""

    def output_shape(self) -> dict[str, ShapeSpec]:
        return {
            f"block{i}": ShapeSpec(channels=self.embed_dim, stride=self.patch_size)
            for i in self.out_indices
        }


def weight_file_family(path: str | os.PathLike) -> str:
    """"dinov2" or "dinov3" for a weight file, read from its key names alone."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"MODEL.SOMA.PRETRAINED={path!r} does not exist")
    suffix = os.path.splitext(path)[1].lower()
    if suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(path, framework="pt") as f:
            return detect_vit_family(dict.fromkeys(f.keys(), torch.empty(0)))
    if suffix not in (".pth", ".pt", ".bin", ".ckpt"):
        read_weight_file(path)  # raises its error naming the unsupported file type
    state, _ = _unwrap(torch_load_weights(path, mmap=True), path)
    return detect_vit_family(state)


def resolve_vit_family(cfg: CfgNode) -> str:
    """The family ``MODEL.VIT.FAMILY`` means for this config; a mismatch with the file is an error."""
    family = cfg.MODEL.VIT.FAMILY
    if family not in VIT_FAMILIES:
        raise ValueError(f"MODEL.VIT.FAMILY={family!r} is not supported; accepted: "
                         f"{list(VIT_FAMILIES)}")
    path = resolve_repo_path(cfg.MODEL.SOMA.PRETRAINED)
    if not path:
        return "dinov2" if family == "auto" else family
    detected = weight_file_family(path)
    if family not in ("auto", detected):
        raise ValueError(
            f"MODEL.VIT.FAMILY={family!r} but MODEL.SOMA.PRETRAINED={path!r} holds a {detected} "
            f"ViT ({'no' if detected == 'dinov3' else 'an'} absolute position embedding); set "
            f"MODEL.VIT.FAMILY to {detected!r} or 'auto'"
        )
    return detected


def _dinov3_kwargs(cfg: CfgNode, from_file: dict | None) -> dict:
    v = cfg.MODEL.VIT
    if v.ARCH not in DINOV3_ARCHS:
        raise ValueError(
            f"MODEL.VIT.ARCH={v.ARCH!r} is not a DINOv3 size (MODEL.VIT.FAMILY dinov3); "
            f"accepted: {sorted(DINOV3_ARCHS)}"
        )
    kwargs = dict(DINOV3_ARCHS[v.ARCH])
    for key, field in (("embed_dim", "EMBED_DIM"), ("depth", "DEPTH"), ("num_heads", "NUM_HEADS")):
        if getattr(v, field):
            kwargs[key] = int(getattr(v, field))
    depth = kwargs["depth"]
    out_indices = [int(i) for i in v.OUT_INDICES]
    if not out_indices or any(not 0 <= i < depth for i in out_indices):
        raise ValueError(f"MODEL.VIT.OUT_INDICES={list(v.OUT_INDICES)} must name blocks in "
                         f"[0, {depth - 1}] for DINOv3 {v.ARCH} with depth {depth}")
    start_block = cfg.MODEL.SOMA.START_BLOCK
    if not 0 <= start_block < depth:
        raise ValueError(f"MODEL.SOMA.START_BLOCK={start_block} is outside [0, {depth - 1}] "
                         f"(the ViT has {depth} blocks)")
    mode = cfg.MODEL.SOMA.MODE
    frozen = depth if mode == "frozen" else (0 if mode == "full_finetune" else start_block)
    kwargs.update(
        patch_size=v.PATCH_SIZE, drop_path_rate=v.DROP_PATH_RATE,
        layer_scale_init=v.LAYER_SCALE_INIT, out_indices=tuple(out_indices),
        frozen_blocks=frozen,
        checkpoint_blocks=-1 if v.USE_ACT_CHECKPOINT else v.CHECKPOINT_BLOCKS,
        num_register_tokens=int(v.NUM_REGISTERS) or 4,
    )
    if from_file is not None:
        if v.NUM_REGISTERS and int(v.NUM_REGISTERS) != from_file["num_register_tokens"]:
            raise ValueError(
                f"MODEL.VIT.NUM_REGISTERS={v.NUM_REGISTERS} but MODEL.SOMA.PRETRAINED has "
                f"{from_file['num_register_tokens']} storage tokens (0 = take the file's)")
        kwargs.update({k: from_file[k] for k in _FROM_FILE if k in from_file})
        if kwargs["ffn_layer"] != DINOV3_ARCHS[v.ARCH].get("ffn_layer", "mlp"):
            logger.warning("MODEL.VIT.ARCH=%s but the weights have a %s FFN; using the file's",
                           v.ARCH, kwargs["ffn_layer"])
    return kwargs


def _check_targets(vit: DinoV3VisionTransformer, cfg: CfgNode) -> None:
    """Every target suffix must name a linear of this ViT (SwiGLU sizes: w1/w2/w3, not fc1/fc2)."""
    if cfg.MODEL.SOMA.MODE in ("full_finetune", "frozen"):
        return
    config = SoMAConfig(rank=1, target_modules=list(cfg.MODEL.SOMA.TARGETS))
    if isinstance(config.target_modules, str):
        return
    names = [n for n, m in vit.named_modules() if isinstance(m, torch.nn.Linear)]
    unused = [t for t in config.target_modules
              if not any(n == t or n.endswith("." + t) for n in names)]
    if unused:
        ffn = "w1, w2, w3 (SwiGLU)" if any(n.endswith("mlp.w1") for n in names) else "fc1, fc2"
        raise ValueError(f"MODEL.SOMA.TARGETS entries {unused} name no linear layer of this "
                         f"DINOv3 ViT; its FFN linears are {ffn}, its attention q, k, v, proj")


def build_dinov3_net(cfg: CfgNode) -> DinoV3BackboneNet:
    """The DINOv3 ViT of ``MODEL.VIT`` with ``MODEL.SOMA.PRETRAINED`` loaded (no SoMA yet)."""
    path = resolve_repo_path(cfg.MODEL.SOMA.PRETRAINED)
    conversion = None
    if path:
        raw, _ = read_weight_file(path)
        conversion = convert_dinov3_state_dict(raw, patch_size=cfg.MODEL.VIT.PATCH_SIZE,
                                               source=path)
    vit = DinoV3BackboneNet(**_dinov3_kwargs(cfg, conversion.config if conversion else None))
    if conversion is not None:
        try:
            incompatible = vit.load_state_dict(conversion.state_dict, strict=False)
        except RuntimeError as e:  # shape mismatches
            raise ValueError(f"MODEL.SOMA.PRETRAINED={path!r} does not fit MODEL.VIT.ARCH="
                             f"{cfg.MODEL.VIT.ARCH!r} (DINOv3): {e}") from e
        check_state_fit(incompatible, path, cfg.MODEL.VIT.ARCH, "DINOv3")
        logger.info("Loaded DINOv3 weights before the SoMA decomposition: %s",
                    conversion.summary())
    _check_targets(vit, cfg)
    return vit
