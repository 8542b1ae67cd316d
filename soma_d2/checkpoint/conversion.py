"""The record of one ViT checkpoint conversion, shared by the DINOv2 and DINOv3 converters.

Both converters return the converted state dict with what they detected (layout, prefix, config)
and changed (dropped and zero-filled keys, patch resampling); the fields and the one-line summary
for logs live once here, and each family adds its own fields and summary wording.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch


@dataclass
class ViTConversion:
    """A converted state dict plus what was detected and changed, for logs and tools."""

    source: str
    layout: str
    state_dict: dict[str, torch.Tensor]
    config: dict
    prefix: str = ""
    dropped: list[str] = field(default_factory=list)
    filled: list[str] = field(default_factory=list)
    patch_size: tuple[int, int] = (0, 0)

    def _summary_parts(self, layouts: Mapping[str, str], tokens: str, patch_note: str = "",
                       extra: tuple[str, ...] = (), dropped: str = "keys") -> list[str]:
        """The summary's parts: layout, size, patch resampling (with ``patch_note``), ``extra``,
        then the ignored (named ``dropped``) and zero-filled keys."""
        cfg = self.config
        parts = [
            f"{self.source}: {layouts[self.layout]} layout"
            + (f" (prefix {self.prefix!r})" if self.prefix else ""),
            f"embed_dim {cfg['embed_dim']}, depth {cfg['depth']}, "
            f"{cfg['num_register_tokens']} {tokens}, ffn {cfg['ffn_layer']}",
            f"{len(self.state_dict)} tensors",
        ]
        old_p, new_p = self.patch_size
        if old_p != new_p:
            parts.append(f"patch {old_p} -> {new_p}{patch_note}")
        parts.extend(extra)
        if self.dropped:
            parts.append(f"ignored {len(self.dropped)} {dropped}")
        if self.filled:
            parts.append(f"zero-filled {self.filled}")
        return parts


def check_schema(out: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]],
                 unknown: list[str], origin: Mapping[str, str], what: str) -> None:
    """Raise ValueError naming ``what`` (the file and its layout) if the converted ``out`` has
    ``unknown`` keys, misses keys of ``expected`` or has wrong shapes (named by source key)."""
    missing = [k for k in expected if k not in out]
    wrong = [
        f"{origin.get(k, k)} {tuple(out[k].shape)} (expected {shape})"
        for k, shape in expected.items()
        if k in out and tuple(out[k].shape) != shape
    ]
    if missing or unknown or wrong:
        problems = []
        if unknown:
            problems.append(f"unknown keys {unknown[:12]}" + (" ..." if len(unknown) > 12 else ""))
        if missing:
            problems.append(f"missing keys {missing[:12]}" + (" ..." if len(missing) > 12 else ""))
        if wrong:
            problems.append(f"wrong shapes {wrong[:6]}")
        raise ValueError(f"{what}: " + "; ".join(problems))
