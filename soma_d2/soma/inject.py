"""Inject SoMA adapters into a model, freeze the rest, and merge them back for deployment.

``inject_soma`` collects every matched ``nn.Linear`` first, decomposes all of them in one batched
call on their own device (see :mod:`.svd`), then swaps in :class:`SoMALinear` modules and applies
the freeze policy to the whole model. It must run AFTER the pretrained weights are loaded: the
adapters are built from whatever ``W`` the layers hold at that moment.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from .cache import DecompositionCache
from .config import SoMAConfig
from .layer import SoMALinear
from .svd import decompose_weights
from .threads import map_single_threaded

CONFIG_ATTR = "_soma_config"
NO_BLOCK = -1  # SoMALayerInfo.block of a layer adapted with block_pattern=None


@dataclass
class SoMALayerInfo:
    """One replaced module: full name, block (-1 without block_pattern), rank, shape, scaling."""

    name: str
    block: int
    rank: int
    out_features: int
    in_features: int
    scaling: float


@dataclass
class SoMAReport:
    """What :func:`inject_soma` did: replaced layers, parameter counts and the config used."""

    config: SoMAConfig
    layers: list[SoMALayerInfo] = field(default_factory=list)
    trainable_params: int = 0
    total_params: int = 0
    trainable_names: list[str] = field(default_factory=list)

    @property
    def trainable_percent(self) -> float:
        return 100.0 * self.trainable_params / max(self.total_params, 1)

    def __str__(self) -> str:
        cfg = self.config
        alpha = "rank" if cfg.alpha is None else f"{cfg.alpha:g}"
        scope = ("every matching linear" if cfg.block_pattern is None
                 else f"blocks>={cfg.start_block}")
        lines = [
            f"SoMA injection: init={cfg.init}, rank={cfg.rank}, alpha={alpha}, "
            f"{scope}, bias={cfg.bias}, dropout={cfg.dropout:g}",
        ]
        width = max([len("module")] + [len(info.name) for info in self.layers])
        lines.append(f"  {'module':<{width}}  block  rank  scaling  out x in")
        for info in self.layers:
            lines.append(
                f"  {info.name:<{width}}  {_block_text(info.block):>5}  {info.rank:>4}  "
                f"{info.scaling:>7g}  "
                f"{info.out_features} x {info.in_features}"
            )
        lines.append(
            f"{len(self.layers)} layers adapted; trainable parameters "
            f"{self.trainable_params:,} / {self.total_params:,} ({self.trainable_percent:.3f}%)"
        )
        return "\n".join(lines)


def _block_text(block: int) -> str:
    return "-" if block == NO_BLOCK else str(block)


def _parent_and_attr(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, attr = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), attr


def _select_targets(model: nn.Module, config: SoMAConfig) -> list[tuple[str, nn.Linear, int, int]]:
    """(name, module, block, rank) of every linear layer to adapt, in module order."""
    chosen = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or not config.matches_target(name):
            continue
        if config.block_pattern is None:  # no blocks: every matching linear (PEFT's LoRA)
            block, rank = NO_BLOCK, config.rank
        else:
            block = config.block_index(name)
            if block is None or block < config.start_block:
                continue
            rank = config.rank_for_block(block)
        if rank == 0:
            continue
        parent, _ = _parent_and_attr(model, name)
        if isinstance(parent, nn.MultiheadAttention):
            raise ValueError(
                f"inject_soma: '{name}' belongs to nn.MultiheadAttention, which reads its "
                "out_proj weight directly; it cannot be replaced by a SoMALinear"
            )
        if not module.weight.is_floating_point():
            raise TypeError(
                f"inject_soma: module '{name}' has weight dtype {module.weight.dtype}; SoMA needs "
                "a floating-point weight"
            )
        limit = min(module.in_features, module.out_features)
        if not 0 < rank < limit:
            raise ValueError(
                f"inject_soma: rank {rank} for module '{name}' (weight {module.out_features}x"
                f"{module.in_features}) must be in [1, {limit - 1}]"
            )
        chosen.append((name, module, block, rank))
    return chosen


def _no_match_error(model: nn.Module, config: SoMAConfig) -> ValueError:
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    blocks = sorted({b for n in linears if (b := config.block_index(n)) is not None})
    sample = ", ".join(repr(n) for n in linears[:8]) or "(the model has no nn.Linear)"
    more = f" ... ({len(linears)} in total)" if len(linears) > 8 else ""
    if config.block_pattern is None:
        return ValueError(
            f"inject_soma: no nn.Linear matched target_modules={config.target_modules!r} "
            f"(block_pattern=None). Available linear layers: {sample}{more}"
        )
    return ValueError(
        f"inject_soma: no nn.Linear matched target_modules={config.target_modules!r} in blocks >= "
        f"{config.start_block} (block_pattern={config.block_pattern!r}; block indices found: "
        f"{blocks or 'none'}). Available linear layers: {sample}{more}"
    )


def _extra_matches(named: dict[str, nn.Parameter], config: SoMAConfig, entry: str) -> list[str]:
    hits = [n for n in named if config.matches_extra(n, entry)]
    if not hits:
        sample = ", ".join(repr(n) for n in list(named)[:8])
        raise ValueError(
            f"inject_soma: extra_trainable entry {entry!r} matches no parameter; "
            f"parameters include {sample}"
        )
    return hits


def apply_freeze_policy(model: nn.Module, config: SoMAConfig) -> list[str]:
    """Freeze everything but adapter factors, the configured biases and ``extra_trainable``.

    Returns the names of the parameters left trainable. Every ``extra_trainable`` entry must match
    at least one parameter, otherwise a ValueError lists a few available names.
    """
    named = dict(model.named_parameters())
    trainable: set[str] = set()
    for name, module in model.named_modules():
        if isinstance(module, SoMALinear):
            prefix = f"{name}." if name else ""
            trainable.update({prefix + "A", prefix + "B"})
            if config.bias == "adapted" and module.bias is not None:
                trainable.add(prefix + "bias")
    if config.bias == "all":
        trainable.update(n for n in named if n == "bias" or n.endswith(".bias"))
    for entry in config.extra_trainable:
        trainable.update(_extra_matches(named, config, entry))
    for name, param in named.items():
        param.requires_grad_(name in trainable)
    return sorted(trainable)


def inject_soma(model: nn.Module, config: SoMAConfig, method: str = "auto",
                cache: DecompositionCache | None = None) -> SoMAReport:
    """Replace matched linear layers by :class:`SoMALinear` in place and freeze the rest.

    Modules are adapted when their name matches ``config.target_modules`` AND ``block_pattern``
    finds a block index ``>= start_block`` in it (modules outside blocks are never adapted); with
    ``block_pattern=None`` every matching ``nn.Linear`` is adapted, as PEFT's LoRA does. All
    targets are decomposed in one batched call (``method``: see :func:`decompose_weights`); with
    a ``cache`` the triplets of ``minor``/``principal`` modes come from (or go to) it, while
    ``released`` mode, which decomposes freshly drawn random matrices, never uses it. The config
    is kept on the model (for :func:`adapter_state_dict`); the report lists what changed.
    """
    if not isinstance(config, SoMAConfig):
        raise TypeError(f"inject_soma expects a SoMAConfig, got {type(config).__name__}")
    if any(isinstance(m, SoMALinear) for m in model.modules()):
        raise ValueError("inject_soma: the model already contains SoMALinear layers")
    targets = _select_targets(model, config)
    if not targets:
        raise _no_match_error(model, config)
    named = dict(model.named_parameters())
    for entry in config.extra_trainable:  # fail before the model is modified
        _extra_matches(named, config, entry)

    triplets: list = [None] * len(targets)
    if config.init in ("minor", "principal", "released"):
        sources = []
        for _, module, _, _ in targets:
            if config.init == "released":
                rand = torch.empty(module.out_features, module.in_features)
                nn.init.kaiming_uniform_(rand, a=math.sqrt(5))
                sources.append(rand.to(module.weight.device))
            else:
                sources.append(module.weight.detach())
        which = "principal" if config.init == "principal" else "minor"
        ranks = [t[3] for t in targets]

        def compute() -> list:
            return decompose_weights(sources, ranks, which, method)

        if cache is not None and config.init != "released":
            triplets = cache.decompose([t[0] for t in targets], sources, ranks, which, method,
                                       compute)
        else:
            triplets = compute()

    def build(job: tuple) -> SoMALinear:
        (_, module, _, rank), trip = job
        return SoMALinear.from_linear(module, rank, config.alpha_for_rank(rank), config.init,
                                      config.dropout, triplets=trip, method=method)

    jobs = list(zip(targets, triplets, strict=True))
    # layers are independent: built on parallel threads, torch single-threaded (see .threads);
    # "lora" draws its A from the global RNG, so its layers are built in order
    layers = ([build(job) for job in jobs] if config.init == "lora"
              else map_single_threaded(build, jobs))
    report = SoMAReport(config=config)
    for ((name, module, block, rank), _), layer in zip(jobs, layers, strict=True):
        parent, attr = _parent_and_attr(model, name)
        setattr(parent, attr, layer)
        report.layers.append(SoMALayerInfo(name, block, rank, module.out_features,
                                           module.in_features, layer.scaling))
    object.__setattr__(model, CONFIG_ATTR, config)
    report.trainable_names = apply_freeze_policy(model, config)
    params = list(model.parameters())
    report.total_params = sum(p.numel() for p in params)
    report.trainable_params = sum(p.numel() for p in params if p.requires_grad)
    return report


def find_soma_config(model: nn.Module) -> SoMAConfig | None:
    """The config :func:`inject_soma` stored on ``model`` or one of its submodules, if any."""
    found = [getattr(m, CONFIG_ATTR) for m in model.modules() if hasattr(m, CONFIG_ATTR)]
    if len(found) > 1:
        raise ValueError("the model holds several SoMA injections; use each submodule separately")
    return found[0] if found else None


def merge_soma(model: nn.Module) -> nn.Module:
    """Replace every SoMALinear by its merged plain ``nn.Linear`` in place; returns the model.

    Nothing of the adapters is left afterwards (no SoMALinear, no stored config), so the model's
    state dict has the layout of the original architecture.
    """
    names = [n for n, m in model.named_modules() if isinstance(m, SoMALinear)]
    if isinstance(model, SoMALinear):
        raise TypeError("merge_soma: call .to_linear() on a single SoMALinear")
    for name in names:
        parent, attr = _parent_and_attr(model, name)
        setattr(parent, attr, getattr(parent, attr).to_linear())
    for module in model.modules():
        if hasattr(module, CONFIG_ATTR):
            object.__delattr__(module, CONFIG_ATTR)
    return model
