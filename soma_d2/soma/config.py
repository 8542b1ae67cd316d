"""SoMA configuration: which linear layers get adapters, how they start and what else trains.

The configuration is a plain dataclass validated on construction, so that a typo in a YAML file or
a script fails at once with the field, the value and the accepted values, instead of silently
adapting nothing (or everything). It serializes to a plain dict, which adapter-only checkpoints
embed so that a checkpoint can only be loaded into a model decomposed the same way.
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from typing import Any

INIT_MODES = ("minor", "principal", "lora", "released")
# backbone modes (MODEL.SOMA.MODE): the adapter modes and the init each one decomposes with, plus
# the two baselines without adapters
MODE_TO_INIT = {"soma": "minor", "principal": "principal", "lora": "lora", "released": "released"}
BACKBONE_MODES = (*MODE_TO_INIT, "full_finetune", "frozen")
BIAS_MODES = ("none", "adapted", "all")
DEFAULT_TARGETS = ("q", "k", "v", "proj", "fc1", "fc2")
DEFAULT_BLOCK_PATTERN = r"(?:^|\.)blocks\.(\d+)\."


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _suffix_match(name: str, pattern: str) -> bool:
    return name == pattern or name.endswith("." + pattern)


@dataclasses.dataclass
class SoMAConfig:
    """Settings of one SoMA injection (fields documented in the class body).

    ``target_modules`` is either a list of dotted name suffixes, matched against the last
    component(s) of a module's full name at dot boundaries (``"q"`` matches ``blocks.3.attn.q`` but
    not ``blocks.3.attn.qkv``; ``"attn.proj"`` matches ``blocks.3.attn.proj`` only), or a single
    regex string matched with ``re.fullmatch`` against the full module name. Only modules whose
    name yields a block index through ``block_pattern`` (``re.search``, group 1) and whose block is
    ``>= start_block`` are adapted: linear layers outside the blocks (patch embedding, heads) are
    never touched. ``block_pattern=None`` drops the block condition, for models without numbered
    blocks (an MLP, a custom module): every ``nn.Linear`` whose name matches ``target_modules`` is
    adapted, as PEFT's LoRA does; it requires ``start_block=0`` and no ``rank_per_block``.
    ``alpha=None`` means alpha equals each layer's rank (scaling 1, the recipe).
    ``rank_per_block`` (dict or callable ``block -> rank``) overrides ``rank`` per block; a rank
    of 0 there leaves that block without adapters. ``bias``: ``"none"`` freezes every bias,
    ``"adapted"`` trains the biases of the adapted layers, ``"all"`` trains every parameter named
    ``bias`` in the whole model (PEFT's meaning). ``extra_trainable`` entries select further
    parameters to train (e.g. ``"mask_token"``), matched like ``target_modules`` suffixes or,
    failing that, as a regex ``re.fullmatch``-ed against the full parameter name.
    """

    rank: int
    alpha: float | None = None
    target_modules: list[str] | str = dataclasses.field(
        default_factory=lambda: list(DEFAULT_TARGETS)
    )
    init: str = "minor"
    start_block: int = 0
    block_pattern: str | None = DEFAULT_BLOCK_PATTERN
    rank_per_block: Mapping[int, int] | Callable[[int], int] | None = None
    bias: str = "adapted"
    extra_trainable: list[str] = dataclasses.field(default_factory=list)
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if not _is_int(self.rank) or self.rank <= 0:
            raise ValueError(f"SoMAConfig.rank must be a positive int, got {self.rank!r}")
        if self.alpha is not None:
            if not _is_number(self.alpha) or not self.alpha > 0:
                raise ValueError(
                    f"SoMAConfig.alpha must be a positive number or None (= rank), "
                    f"got {self.alpha!r}"
                )
            self.alpha = float(self.alpha)
        self._validate_targets()
        if self.init not in INIT_MODES:
            raise ValueError(f"SoMAConfig.init must be one of {INIT_MODES}, got {self.init!r}")
        if not _is_int(self.start_block) or self.start_block < 0:
            raise ValueError(
                f"SoMAConfig.start_block must be an int >= 0, got {self.start_block!r}"
            )
        self._validate_block_pattern()
        self._validate_rank_per_block()
        if self.bias not in BIAS_MODES:
            raise ValueError(f"SoMAConfig.bias must be one of {BIAS_MODES}, got {self.bias!r}")
        if isinstance(self.extra_trainable, str) or not isinstance(
            self.extra_trainable, (list, tuple)
        ):
            raise TypeError(
                f"SoMAConfig.extra_trainable must be a list of name patterns, "
                f"got {self.extra_trainable!r}"
            )
        for entry in self.extra_trainable:
            if not isinstance(entry, str) or not entry:
                raise TypeError(
                    f"SoMAConfig.extra_trainable entries must be non-empty strings, got {entry!r}"
                )
        self.extra_trainable = list(self.extra_trainable)
        if not _is_number(self.dropout) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"SoMAConfig.dropout must be a float in [0, 1), got {self.dropout!r}")
        self.dropout = float(self.dropout)

    def _validate_targets(self) -> None:
        targets = self.target_modules
        if isinstance(targets, str):
            try:
                re.compile(targets)
            except re.error as exc:
                raise ValueError(
                    f"SoMAConfig.target_modules regex {targets!r} does not compile: {exc}"
                ) from None
            return
        if not isinstance(targets, (list, tuple)) or not targets:
            raise TypeError(
                "SoMAConfig.target_modules must be a non-empty list of name suffixes or a regex "
                f"string, got {targets!r}"
            )
        for entry in targets:
            if not isinstance(entry, str) or not entry or entry.startswith(".") or entry.endswith(
                "."
            ):
                raise ValueError(
                    "SoMAConfig.target_modules entries must be non-empty dotted name suffixes "
                    f"such as 'q' or 'attn.proj', got {entry!r}"
                )
        self.target_modules = list(targets)

    def _validate_block_pattern(self) -> None:
        if self.block_pattern is None:
            if self.start_block != 0:
                raise ValueError(
                    f"SoMAConfig.start_block={self.start_block} needs a block_pattern to find "
                    "block indices; with block_pattern=None (adapt every matching linear) use "
                    "start_block=0"
                )
            if self.rank_per_block is not None:
                raise ValueError(
                    "SoMAConfig.rank_per_block needs a block_pattern to find block indices; "
                    "with block_pattern=None every adapted layer gets `rank`"
                )
            return
        if not isinstance(self.block_pattern, str):
            raise TypeError(
                f"SoMAConfig.block_pattern must be a regex string, got {self.block_pattern!r}"
            )
        try:
            groups = re.compile(self.block_pattern).groups
        except re.error as exc:
            raise ValueError(
                f"SoMAConfig.block_pattern {self.block_pattern!r} does not compile: {exc}"
            ) from None
        if groups != 1:
            raise ValueError(
                f"SoMAConfig.block_pattern must have exactly one capture group (the block index), "
                f"{self.block_pattern!r} has {groups}"
            )

    def _validate_rank_per_block(self) -> None:
        rpb = self.rank_per_block
        if rpb is None or callable(rpb) and not isinstance(rpb, Mapping):
            return
        if not isinstance(rpb, Mapping):
            raise TypeError(
                "SoMAConfig.rank_per_block must be None, a dict {block: rank} or a callable "
                f"block -> rank, got {rpb!r}"
            )
        clean: dict[int, int] = {}
        for key, value in rpb.items():
            block = int(key) if isinstance(key, str) and key.isdigit() else key
            if not _is_int(block) or block < 0:
                raise ValueError(
                    f"SoMAConfig.rank_per_block keys must be block indices >= 0, got {key!r}"
                )
            if not _is_int(value) or value < 0:
                raise ValueError(
                    f"SoMAConfig.rank_per_block[{block}] must be an int >= 0 (0 = no adapter), "
                    f"got {value!r}"
                )
            clean[block] = value
        self.rank_per_block = clean

    def rank_for_block(self, block: int) -> int:
        """Rank of the adapters in ``block`` (0: the block gets none)."""
        rpb = self.rank_per_block
        if rpb is None:
            return self.rank
        if isinstance(rpb, Mapping):
            return rpb.get(block, self.rank)
        value = rpb(block)
        if not _is_int(value) or value < 0:
            raise ValueError(
                f"SoMAConfig.rank_per_block({block}) must return an int >= 0, got {value!r}"
            )
        return value

    def alpha_for_rank(self, rank: int) -> float:
        """Alpha of a layer of this rank: the configured alpha, or the rank itself when None."""
        return float(rank) if self.alpha is None else self.alpha

    def matches_target(self, name: str) -> bool:
        """Whether a module's full dotted name is selected by ``target_modules``."""
        if isinstance(self.target_modules, str):
            return re.fullmatch(self.target_modules, name) is not None
        return any(_suffix_match(name, t) for t in self.target_modules)

    def block_index(self, name: str) -> int | None:
        """Block index that ``block_pattern`` extracts from a module name, or None (also when
        ``block_pattern`` is None: the model is not divided into blocks)."""
        if self.block_pattern is None:
            return None
        found = re.search(self.block_pattern, name)
        return None if found is None else int(found.group(1))

    def matches_extra(self, param_name: str, entry: str) -> bool:
        """Whether a parameter's full name is selected by one ``extra_trainable`` entry."""
        if _suffix_match(param_name, entry):
            return True
        try:
            return re.fullmatch(entry, param_name) is not None
        except re.error:
            return False

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (str/int/float/list/dict/None only): safe for torch.load(weights_only).

        A callable ``rank_per_block`` cannot be serialized; convert it to a dict first.
        """
        if self.rank_per_block is not None and not isinstance(self.rank_per_block, Mapping):
            raise TypeError(
                "SoMAConfig.rank_per_block is a callable and cannot be serialized; pass a dict "
                "{block: rank} instead to save or compare this config"
            )
        out = dataclasses.asdict(self)
        out["target_modules"] = (
            self.target_modules
            if isinstance(self.target_modules, str)
            else list(self.target_modules)
        )
        out["rank_per_block"] = (
            None if self.rank_per_block is None else {int(k): int(v) for k, v in
                                                       self.rank_per_block.items()}
        )
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SoMAConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error (they hint at a version skew)."""
        if not isinstance(data, Mapping):
            raise TypeError(f"SoMAConfig.from_dict expects a dict, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"SoMAConfig.from_dict: unknown keys {unknown}; accepted keys: {sorted(known)}"
            )
        if "rank" not in data:
            raise ValueError("SoMAConfig.from_dict: missing required key 'rank'")
        return cls(**dict(data))
