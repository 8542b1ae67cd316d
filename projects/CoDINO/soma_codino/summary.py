"""Parameter table of a `SoMACoDINO` per part (ViT trainable / frozen, neck, encoder, decoder,
the rest of the query head, each auxiliary head), for checking a build against the official model (DGOD/configs/_base_/models/dinov2_codetr.py)."""
from __future__ import annotations

from torch import nn

__all__ = ["PARTS", "parameter_table"]

PARTS = (
    ("vit", "backbone.net."),
    ("neck", "neck."),
    ("encoder", "query_head.encoder."),
    ("decoder", "query_head.decoder."),
    ("query head (other)", "query_head."),
    ("aux rcnn (RPN + RoI)", "rcnn."),
    ("aux atss", "atss."),
)


def parameter_table(model: nn.Module) -> dict[str, dict[str, int]]:
    """{part: {"trainable": n, "frozen": n}}; each parameter counted once, first matching part."""
    table = {name: {"trainable": 0, "frozen": 0} for name, _ in PARTS}
    table["other"] = {"trainable": 0, "frozen": 0}
    for name, p in model.named_parameters():
        part = next((label for label, prefix in PARTS if name.startswith(prefix)), "other")
        table[part]["trainable" if p.requires_grad else "frozen"] += p.numel()
    return table
