"""Reading the official SoMA release checkpoints and converting their DINOv2 backbone to ours.

The release (ysj9909/SoMA README, release v1.0) ships "adapter & head" files written by mmengine:
``{"state_dict": ..., "ema_state_dict"?: ..., "meta": ...}`` whose backbone part holds only the
adapters, biases and the mask token; the frozen DINOv2 weights come from the separately
converted base file (``dinov2_sora_converted*.pth``, keys without prefix), which the official
``tools/merge_soma_weights.py`` prefixes with ``backbone.model.`` and then overwrites with the
release. This module does the same reading and merging, and maps ``backbone.model.*`` onto a
soma-d2 ViT built with ``MODEL.SOMA.MODE released`` (full pretrained W as the frozen base plus
the trained ``A``/``B`` factors), which is what the official code computes at test time. The
task heads are converted by each project's own ``official_convert`` module (see
``tools/convert_official.py``); :func:`check_consumed` turns any key that nobody
converted or knowingly dropped into an error that names it.
"""
from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping

import torch

from .safe_load import torch_load_weights

__all__ = [
    "BACKBONE_PREFIX",
    "check_consumed",
    "check_converted_against",
    "convert_official_backbone",
    "load_official_checkpoint",
    "merge_official_base",
    "read_official_base",
    "read_official_checkpoint",
]

BACKBONE_PREFIX = "backbone.model."
"""Where ``SoraModel`` keeps the DINOv2 module in the official detector and segmentor."""

_GLOBAL_KEYS = ("cls_token", "pos_embed", "mask_token", "register_tokens",
                "patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight", "norm.bias")
_BLOCK_KEY = re.compile(
    r"^blocks\.(?P<i>\d+)\.(?P<mod>norm1|norm2|ls1|ls2|attn\.(?:q|k|v|proj)|mlp\.(?:fc1|fc2))"
    r"\.(?P<param>weight|bias|gamma|lora_A\.weight|lora_B\.weight)$"
)
_FACTOR_NAMES = {"lora_A.weight": "A", "lora_B.weight": "B"}


def _strip_module(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip one leading ``module.`` (DDP / mmengine's EMA wrapper) from every key."""
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}


def read_official_checkpoint(path: str | os.PathLike, select: str = "state_dict"
                             ) -> dict[str, torch.Tensor]:
    """The tensors of an official (mmengine) checkpoint, one leading ``module.`` stripped.

    ``select``: ``"state_dict"`` (default) is what the official ``tools/test.py`` evaluates; for
    runs trained with mmengine's ``EMAHook`` it already holds the EMA weights, because the hook
    swaps them in before saving and keeps the raw weights in ``ema_state_dict``. ``"ema"``
    takes the same entry but requires that the file has an ``ema_state_dict`` (so that it really
    is an EMA average); ``"raw"`` takes the raw (non-averaged) weights from ``ema_state_dict``.
    ``meta``, ``optimizer``, ``message_hub`` and the EMA ``steps`` counter are ignored. A plain
    state dict (no wrapper) is accepted for ``"state_dict"``.
    """
    if select not in ("state_dict", "ema", "raw"):
        raise ValueError(f"select must be 'state_dict', 'ema' or 'raw', got {select!r}")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"official checkpoint {path!r} does not exist")
    data = torch_load_weights(path)
    if not isinstance(data, Mapping):
        raise ValueError(f"{path}: expected a dict, found {type(data).__name__}")
    has_ema = isinstance(data.get("ema_state_dict"), Mapping)
    if select == "raw":
        if not has_ema:
            raise ValueError(f"{path}: --raw needs an 'ema_state_dict' entry (the raw weights of "
                             "an EMAHook run); this file has none")
        state = data["ema_state_dict"]
    elif isinstance(data.get("state_dict"), Mapping):
        if select == "ema" and not has_ema:
            raise ValueError(f"{path}: --ema needs a file written with mmengine's EMAHook (an "
                             "'ema_state_dict' entry); this one has none, its 'state_dict' holds "
                             "the raw weights")
        state = data["state_dict"]
    elif all(isinstance(v, torch.Tensor) for v in data.values()) and select == "state_dict":
        state = data
    else:
        raise ValueError(f"{path}: no 'state_dict' entry (entries: {sorted(data)[:8]})")
    state = _strip_module({k: v for k, v in state.items() if k != "steps"})
    odd = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if odd:
        raise ValueError(f"{path}: non-tensor entries in the state dict: {odd[:8]}")
    return state


def read_official_base(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The official converted DINOv2 base file (``dinov2_sora_converted*.pth``): keys without
    prefix (``blocks.N.attn.q.weight`` ...), optionally wrapped in ``state_dict``."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"official DINOv2 base file {path!r} does not exist")
    data = torch_load_weights(path)
    if isinstance(data, Mapping) and isinstance(data.get("state_dict"), Mapping):
        data = data["state_dict"]
    if not isinstance(data, Mapping) or not all(isinstance(v, torch.Tensor)
                                                for v in data.values()):
        raise ValueError(f"{path}: expected a state dict of tensors")
    state = dict(data)
    if "blocks.0.attn.qkv.weight" in state or "blocks.0.attn.q.weight" not in state:
        raise ValueError(f"{path}: not an official SoMA-converted DINOv2 file (expected split "
                         "'blocks.0.attn.q.weight' without prefix, as written by the official "
                         "tools/convert_models/convert_dinov2_sora.py)")
    return state


def merge_official_base(release: Mapping[str, torch.Tensor],
                        base: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``tools/merge_soma_weights.py``: base keys prefixed ``backbone.model.`` (unless they
    already are), then overwritten by the release's keys."""
    merged = {(k if k.startswith(BACKBONE_PREFIX) else BACKBONE_PREFIX + k): v
              for k, v in base.items()}
    merged.update(release)
    return merged


def load_official_checkpoint(path: str | os.PathLike, base: str | os.PathLike | None = None,
                             select: str = "state_dict") -> dict[str, torch.Tensor]:
    """A release checkpoint (see :func:`read_official_checkpoint`), merged with the official
    DINOv2 base file when ``base`` is given (an already merged file needs none)."""
    state = read_official_checkpoint(path, select)
    if base is not None:
        state = merge_official_base(state, read_official_base(base))
    return state


def convert_official_backbone(state: Mapping[str, torch.Tensor],
                              target_prefix: str = "backbone.net.",
                              source_prefix: str = BACKBONE_PREFIX,
                              ) -> tuple[dict[str, torch.Tensor], set[str]]:
    """Map the official ``backbone.model.*`` keys onto a soma-d2 ViT (MODE released).

    The official ``DinoVisionTransformer`` already uses our names (split ``attn.q/k/v``,
    ``mlp.fc1/fc2``, ``ls1/ls2.gamma``, ``norm1/norm2``, ``cls_token``, ``pos_embed``,
    ``patch_embed.proj``, ``mask_token``, final ``norm``); the SoRA wrapper's factors
    ``<layer>.lora_A.weight`` (r x in) and ``<layer>.lora_B.weight`` (out x r) become our
    ``<layer>.A`` and ``<layer>.B``, and ``<layer>.weight`` (the FULL pretrained W, since the
    official code never subtracts B A from it) becomes the frozen base of MODE released. Both
    sides compute ``x W^T + b + s (x A^T) B^T`` with ``s = alpha / r``, so ``MODEL.SOMA.RANK`` /
    ``ALPHA`` must be the release's (16 / 16). Returns the converted tensors (under
    ``target_prefix``) and the set of source keys consumed; keys under ``source_prefix`` that
    are not DINOv2 keys are left unconsumed so that the caller reports them.
    """
    out: dict[str, torch.Tensor] = {}
    consumed: set[str] = set()
    for key, value in state.items():
        if not key.startswith(source_prefix):
            continue
        rest = key[len(source_prefix):]
        if rest in _GLOBAL_KEYS:
            if rest == "mask_token":
                value = value.reshape(1, -1)
            out[target_prefix + rest] = value
        elif (m := _BLOCK_KEY.match(rest)) is not None:
            param = _FACTOR_NAMES.get(m["param"], m["param"])
            out[f"{target_prefix}blocks.{m['i']}.{m['mod']}.{param}"] = value
        else:
            continue
        consumed.add(key)
    return out, consumed


def check_consumed(state: Mapping[str, torch.Tensor], consumed: Iterable[str],
                   dropped: Iterable[str] = (), source: str = "<official state dict>") -> None:
    """Raise ValueError naming the keys of ``state`` that were neither converted nor knowingly
    dropped (the first few and the count)."""
    done = set(consumed) | set(dropped)
    unknown = sorted(k for k in state if k not in done)
    if unknown:
        raise ValueError(
            f"{source}: {len(unknown)} keys were neither converted nor knowingly dropped, e.g. "
            f"{unknown[:8]}; this is not the official layout the converter knows (wrong --task, "
            "or a different model config)"
        )


def check_converted_against(converted: Mapping[str, torch.Tensor],
                            expected: Mapping[str, tuple[int, ...]],
                            source: str = "<converted>") -> None:
    """Raise ValueError when ``converted`` lacks keys of the target model (``expected``: name ->
    shape, e.g. from the model built on the meta device), holds keys it does not have, or holds
    a wrong shape; a release file used without its ``--base`` shows up here as missing
    backbone weights."""
    missing = sorted(k for k in expected if k not in converted)
    extra = sorted(k for k in converted if k not in expected)
    wrong = [f"{k} {tuple(converted[k].shape)} (model {tuple(s)})" for k, s in expected.items()
             if k in converted and tuple(converted[k].shape) != tuple(s)]
    problems = []
    if missing:
        hint = (" (the frozen DINOv2 weights: pass the official base file with --base)"
                if any(".weight" in k and "backbone." in k for k in missing) else "")
        problems.append(f"{len(missing)} missing keys{hint}, e.g. {missing[:8]}")
    if extra:
        problems.append(f"{len(extra)} keys the model does not have, e.g. {extra[:8]}")
    if wrong:
        problems.append(f"{len(wrong)} wrong shapes, e.g. {wrong[:4]}")
    if problems:
        raise ValueError(f"{source}: the converted checkpoint does not fit the model: "
                         + "; ".join(problems))
