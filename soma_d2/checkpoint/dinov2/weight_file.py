"""Reading a DINOv2 weight file: torch or safetensors, wrappers unwrapped, model prefix found.

What a file holds around the tensors (``{"model": ...}``, ``{"teacher": ...}``, a ``dinov2.`` or
``module.`` prefix, a classification head) is the same question for every layout, so it is answered
here once, before any layout's key map runs.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping

import torch

from ..safe_load import torch_load_weights

__all__ = ["EXPECTATION", "HEAD_KEY", "read_weight_file", "split_prefix"]

WRAPPER_KEYS = ("state_dict", "model", "teacher", "module", "model_state_dict")
HEAD_KEY = re.compile(r"^(head|classifier|fc_norm|dino_head|ibot_head)\.")
EXPECTATION = (
    "expected a DINOv2 ViT state dict: 'cls_token', 'pos_embed', 'blocks.N.attn.qkv.weight', "
    "'blocks.N.ls1.gamma' (official/timm) or 'embeddings.cls_token', "
    "'encoder.layer.N.attention...' (HF Dinov2Model)"
)


def read_weight_file(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a ``.pth/.pt/.bin`` (torch.load, weights_only) or ``.safetensors`` file.

    Returns the tensor mapping and the ``meta`` dict that ``tools/convert_dinov2.py`` stores next
    to it (empty for other files). Wrappers such as ``{"model": ...}``, ``{"state_dict": ...}``
    or ``{"teacher": ...}`` are unwrapped. Torch zip files are memory-mapped (``mmap=True``,
    copy-on-write: writing to a tensor never touches the file) and safetensors files come from
    safetensors' own mapped reader, so the 1.2 GB of a ViT-L are paged in only as they are used,
    with no unpickling copy; legacy (non-zip) torch files are read normally.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"DINOv2 weight file {path!r} does not exist")
    suffix = os.path.splitext(path)[1].lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path, device="cpu"), {}
    if suffix not in (".pth", ".pt", ".bin", ".ckpt"):
        raise ValueError(
            f"{path}: unsupported weight file type {suffix or '(no suffix)'!r}; expected a "
            "torch.save file (.pth, .pt, .bin, .ckpt) or .safetensors"
        )
    return _unwrap(torch_load_weights(path, mmap=True), path)


def _unwrap(obj: object, source: str) -> tuple[dict[str, torch.Tensor], dict]:
    meta: dict = {}
    for _ in range(len(WRAPPER_KEYS) + 1):
        if not isinstance(obj, Mapping):
            raise ValueError(
                f"{source}: expected a state dict (names -> tensors), found {type(obj).__name__}"
            )
        if isinstance(obj.get("meta"), Mapping):
            meta = dict(obj["meta"])
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return dict(obj), meta
        inner = next((k for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            odd = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
            raise ValueError(
                f"{source}: holds non-tensor entries {odd[:8]} and none of the wrapper entries "
                f"{list(WRAPPER_KEYS)}; {EXPECTATION}"
            )
        obj = obj[inner]
    raise ValueError(f"{source}: wrappers nested too deeply to find a state dict")


def split_prefix(
    state_dict: Mapping[str, torch.Tensor], source: str
) -> tuple[str, dict[str, torch.Tensor], list[str]]:
    """Strip the model prefix (``dinov2.``, ``backbone.``, ``module.``...) found at the class token."""
    anchors = [k for k in state_dict if k == "cls_token" or k.endswith(".cls_token")]
    if len(anchors) > 1:
        teacher = [k for k in anchors if k.startswith("teacher.")]
        anchors = teacher if len(teacher) == 1 else anchors
    if not anchors:
        sample = list(state_dict)[:6]
        raise ValueError(
            f"{source}: not a DINOv2 ViT checkpoint, it has no class token ({EXPECTATION}); "
            f"its first keys are {sample}"
        )
    if len(anchors) > 1:
        raise ValueError(f"{source}: several models in one file (class tokens {anchors}); "
                         "extract one state dict first")
    prefix = anchors[0][: -len("cls_token")]
    if prefix == "embeddings." or prefix.endswith(".embeddings."):
        prefix = prefix[: -len("embeddings.")]
    inside = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    outside = [k for k in state_dict if not k.startswith(prefix)]
    return prefix, inside, outside
