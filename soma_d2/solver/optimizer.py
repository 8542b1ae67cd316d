"""Optimizer builder with the SoMA recipe's parameter groups.

The recipe (mmcv's `paramwise_cfg`) gives the ViT a smaller lr and weight decay than the head and
no decay to norms and embeddings; Detectron2's default builder knows none of this. Groups are made
from trainable parameters only, so frozen SVD residuals and frozen blocks never reach the optimizer,
and every group carries its rule label, `base_lr`, `base_weight_decay` and parameter names, which
the weight-decay annealer and the logged table read.
"""
from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from detectron2.config import CfgNode
from detectron2.layers.batch_norm import FrozenBatchNorm2d
from detectron2.layers.batch_norm import LayerNorm as D2LayerNorm
from detectron2.solver.build import maybe_add_gradient_clipping
from tabulate import tabulate
from torch import nn

from ..compat import optimizer_class_with_global_clipping
from ..utils import unwrap_model

logger = logging.getLogger(__name__)

__all__ = [
    "BACKBONE_PREFIX",
    "NO_DECAY_NAMES",
    "NORM_MODULE_TYPES",
    "OPTIMIZERS",
    "ParamRule",
    "build_optimizer",
    "format_param_groups",
    "get_param_groups",
    "parse_custom_rules",
]

BACKBONE_PREFIX = "backbone.net."  # the ViT inside the Detectron2 backbone (ViTDet convention)
NO_DECAY_NAMES = ("pos_embed", "cls_token", "register_tokens", "mask_token")
OPTIMIZERS = ("AdamW", "SGD")
CLIP_TYPES = ("full_model", "norm", "value")

# nn.modules.batchnorm._NormBase covers BatchNorm*, SyncBatchNorm, InstanceNorm* and Detectron2's
# NaiveSyncBatchNorm (a BatchNorm2d); FrozenBatchNorm2d only has buffers but is listed for clarity.
NORM_MODULE_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
    nn.RMSNorm,
    D2LayerNorm,
    FrozenBatchNorm2d,
)


@dataclass(frozen=True)
class ParamRule:
    """The outcome of the rules for one parameter: its group label and multipliers."""

    label: str
    lr_mult: float
    decay_mult: float
    no_decay: bool


def parse_custom_rules(rules: Sequence[Any]) -> list[tuple[str, float, float]]:
    """Validate SOLVER.CUSTOM_RULES entries `[pattern, lr_mult, decay_mult]` and return tuples."""
    parsed = []
    for i, rule in enumerate(rules):
        ok = isinstance(rule, (list, tuple)) and len(rule) == 3 and isinstance(rule[0], str)
        if ok:
            try:
                lr_mult, decay_mult = float(rule[1]), float(rule[2])
            except (TypeError, ValueError):
                ok = False
        if not ok or not rule[0] or lr_mult < 0 or decay_mult < 0:
            raise ValueError(
                f"SOLVER.CUSTOM_RULES[{i}]={rule!r}: expected [pattern (non-empty str), "
                "lr_mult (>= 0), decay_mult (>= 0)]"
            )
        parsed.append((rule[0], lr_mult, decay_mult))
    return parsed


def _rule_for(
    name: str,
    is_norm: bool,
    *,
    backbone_lr_mult: float,
    backbone_wd_mult: float,
    no_decay_patterns: Sequence[str],
    custom_rules: Sequence[tuple[str, float, float]],
) -> ParamRule:
    no_decay = (
        is_norm
        or "norm" in name
        or any(p in name for p in NO_DECAY_NAMES)
        or any(p in name for p in no_decay_patterns)
    )
    matches = [r for r in custom_rules if r[0] in name]
    if matches:
        # longest pattern wins; max() keeps the first of equal length, i.e. list order breaks ties
        pattern, lr_mult, decay_mult = max(matches, key=lambda r: len(r[0]))
        label = f"custom[{pattern}]"
    elif name.startswith(BACKBONE_PREFIX):
        label, lr_mult, decay_mult = "backbone", backbone_lr_mult, backbone_wd_mult
    else:
        label, lr_mult, decay_mult = "head", 1.0, 1.0
    if no_decay:
        label += "/no_decay"
    return ParamRule(label, lr_mult, decay_mult, no_decay)


def get_param_groups(
    model: nn.Module,
    *,
    base_lr: float,
    weight_decay: float,
    backbone_lr_mult: float = 1.0,
    backbone_wd_mult: float = 1.0,
    no_decay_patterns: Sequence[str] = (),
    custom_rules: Sequence[Sequence[Any]] = (),
) -> list[dict[str, Any]]:
    """Group the trainable parameters of `model` by (lr, weight decay, rule label).

    Rules, in order: names under `backbone.net.` get the backbone multipliers; a matching custom
    rule (longest pattern wins) replaces them; norms (by module type, or `norm` in the name),
    position/class/register/mask tokens and `no_decay_patterns` get zero decay whatever the
    multipliers say. Shared parameters appear once, under their first name.
    """
    rules = parse_custom_rules(custom_rules)
    model = unwrap_model(model)
    groups: dict[tuple[float, float, str], dict[str, Any]] = {}
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        is_norm = isinstance(module, NORM_MODULE_TYPES)
        for param_name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            name = f"{module_name}.{param_name}" if module_name else param_name
            rule = _rule_for(
                name,
                is_norm,
                backbone_lr_mult=backbone_lr_mult,
                backbone_wd_mult=backbone_wd_mult,
                no_decay_patterns=no_decay_patterns,
                custom_rules=rules,
            )
            lr = base_lr * rule.lr_mult
            wd = 0.0 if rule.no_decay else weight_decay * rule.decay_mult
            group = groups.setdefault(
                (lr, wd, rule.label),
                {
                    "params": [],
                    "param_names": [],
                    "name": rule.label,
                    "lr": lr,
                    "weight_decay": wd,
                    "base_lr": lr,
                    "base_weight_decay": wd,
                },
            )
            group["params"].append(param)
            group["param_names"].append(name)
    return list(groups.values())


def _add_gradient_clipping(cfg: CfgNode, optimizer: torch.optim.Optimizer) -> None:
    clip = cfg.SOLVER.CLIP_GRADIENTS
    if not clip.ENABLED:
        return
    if clip.CLIP_TYPE == "full_model":
        # Detectron2's "norm" clips each tensor separately; the recipe (mmcv `clip_grad`) clips the
        # total norm over all parameters, which Detectron2 supports only as a "global clipper".
        clipper = functools.partial(
            torch.nn.utils.clip_grad_norm_, max_norm=clip.CLIP_VALUE, norm_type=clip.NORM_TYPE
        )
        optimizer.__class__ = optimizer_class_with_global_clipping(type(optimizer), clipper)
    elif clip.CLIP_TYPE in CLIP_TYPES:
        maybe_add_gradient_clipping(cfg, optimizer)
    else:
        raise ValueError(
            f"SOLVER.CLIP_GRADIENTS.CLIP_TYPE={clip.CLIP_TYPE!r}; accepted: {', '.join(CLIP_TYPES)}"
        )


def build_optimizer(cfg: CfgNode, model: nn.Module) -> torch.optim.Optimizer:
    """Build SOLVER.OPTIMIZER (AdamW or SGD) over the recipe's parameter groups, with clipping.

    Detectron2's legacy bias options are refused rather than ignored, since these groups decay
    biases like weights (as the official recipe does). The group table is logged at INFO.
    """
    solver = cfg.SOLVER
    if solver.BIAS_LR_FACTOR != 1.0 or solver.WEIGHT_DECAY_BIAS is not None:
        raise ValueError(
            "SOLVER.BIAS_LR_FACTOR / SOLVER.WEIGHT_DECAY_BIAS are not supported by soma-d2's "
            "optimizer builder; use SOLVER.CUSTOM_RULES (e.g. ['bias', lr_mult, decay_mult])"
        )
    groups = get_param_groups(
        model,
        base_lr=solver.BASE_LR,
        weight_decay=solver.WEIGHT_DECAY,
        backbone_lr_mult=solver.BACKBONE_LR_MULT,
        backbone_wd_mult=solver.BACKBONE_WD_MULT,
        no_decay_patterns=list(solver.NO_DECAY_PATTERNS),
        custom_rules=list(solver.CUSTOM_RULES),
    )
    if not groups:
        raise ValueError(
            "build_optimizer: the model has no trainable parameters (all requires_grad=False); "
            "check MODEL.SOMA.MODE and the freezing rules"
        )
    name = str(solver.OPTIMIZER).lower()
    if name == "adamw":
        betas = tuple(float(b) for b in solver.BETAS)
        if len(betas) != 2:
            raise ValueError(f"SOLVER.BETAS={solver.BETAS!r}: expected two values")
        optimizer: torch.optim.Optimizer = torch.optim.AdamW(
            groups, lr=solver.BASE_LR, betas=betas, eps=solver.EPS, weight_decay=solver.WEIGHT_DECAY
        )
    elif name == "sgd":
        optimizer = torch.optim.SGD(
            groups,
            lr=solver.BASE_LR,
            momentum=solver.MOMENTUM,
            nesterov=solver.NESTEROV,
            weight_decay=solver.WEIGHT_DECAY,
        )
    else:
        raise ValueError(
            f"SOLVER.OPTIMIZER={solver.OPTIMIZER!r}; accepted: {', '.join(OPTIMIZERS)}"
        )
    _add_gradient_clipping(cfg, optimizer)
    logger.info("Optimizer parameter groups:\n%s", format_param_groups(optimizer, model))
    return optimizer


def format_param_groups(optimizer: torch.optim.Optimizer, model: nn.Module) -> str:
    """A table of the optimizer's groups (rule, tensors, params, lr, decay) and trainable share."""
    rows = []
    trainable = 0
    for i, group in enumerate(optimizer.param_groups):
        numel = sum(p.numel() for p in group["params"])
        trainable += numel
        rows.append(
            [
                group.get("name", f"group{i}"),
                len(group["params"]),
                f"{numel:,}",
                f"{group['lr']:.3g}",
                f"{group['weight_decay']:.3g}",
            ]
        )
    total = sum(p.numel() for p in unwrap_model(model).parameters())
    table = tabulate(
        rows, headers=["rule", "#tensors", "#params", "lr", "weight decay"], tablefmt="pipe"
    )
    share = 100.0 * trainable / total if total else 0.0
    return f"{table}\ntrainable: {trainable:,} of {total:,} params ({share:.2f}%)"
