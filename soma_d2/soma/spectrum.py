"""Singular-spectrum analysis of pretrained weights and of what fine-tuning changed in them.

SoMA's argument rests on two measurements per layer: how much of the weight's energy sits in its
r minor singular components (little: adapting them disturbs little of the pretrained function),
and where a fine-tuning update ``dW = W_tuned - W`` falls relative to the singular subspaces of the
ORIGINAL ``W``. With ``W = U diag(S) V^T`` (thin SVD, k = min(out, in) triplets, descending) the
triplets are split into ``principal`` (first r), ``middle`` and ``minor`` (last r); the update's
energy share in a group is ``||dW V_g||^2 / ||dW||^2`` on the input side and ``||U_g^T dW||^2 /
||dW||^2`` on the output side. On the larger side the singular vectors do not span the whole
space, and the rest of the energy is reported as ``null`` (the shares of a side sum to one). The
two-sided share ``||U_g^T dW V_g||^2 / ||dW||^2`` counts only what maps group to group.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

__all__ = ["GROUPS", "analyze_weights", "layer_spectrum"]

GROUPS = ("principal", "middle", "minor")


def _groups(k: int, rank: int) -> dict[str, slice]:
    if not (0 < rank and 2 * rank <= k):
        raise ValueError(f"rank {rank} must be in [1, {k // 2}] for a weight with {k} singular "
                         "values (principal and minor groups must not overlap)")
    return {"principal": slice(0, rank), "middle": slice(rank, k - rank),
            "minor": slice(k - rank, k)}


def _shares(parts: dict[str, torch.Tensor], total: float, full_space: bool) -> dict[str, float]:
    out = {g: float(p) / total for g, p in parts.items()}
    if not full_space:
        out["null"] = max(0.0, 1.0 - sum(out.values()))
    return out


def layer_spectrum(weight: torch.Tensor, rank: int,
                   tuned: torch.Tensor | None = None) -> dict[str, Any]:
    """Spectrum numbers of one weight (float64 SVD) and, with ``tuned``, of its update."""
    w = weight.detach().to("cpu", torch.float64)
    k = min(w.shape)
    groups = _groups(k, rank)
    if tuned is None:
        s = torch.linalg.svdvals(w)
        u = v = None
    else:
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        v = vh.mT
    energy = s.square()
    total = float(energy.sum())
    result: dict[str, Any] = {
        "shape": list(w.shape),
        "singular_values": s.tolist(),
        "energy_share": {g: float(energy[sl].sum()) / total for g, sl in groups.items()},
    }
    result["minor_energy_share"] = result["energy_share"]["minor"]
    if tuned is None:
        return result
    d = tuned.detach().to("cpu", torch.float64) - w
    d_norm2 = float(d.square().sum())
    update: dict[str, Any] = {"frobenius": d_norm2 ** 0.5,
                              "relative": d_norm2 ** 0.5 / total ** 0.5}
    if d_norm2 == 0.0:
        update.update({"input_side": None, "output_side": None, "two_sided": None})
    else:
        right = d @ v  # out x k: coordinates along the right singular vectors
        left = u.mT @ d  # k x in
        both = u.mT @ d @ v
        out_f, in_f = w.shape
        update["input_side"] = _shares({g: right[:, sl].square().sum() for g, sl in
                                        groups.items()}, d_norm2, in_f == k)
        update["output_side"] = _shares({g: left[sl].square().sum() for g, sl in
                                         groups.items()}, d_norm2, out_f == k)
        update["two_sided"] = {g: float(both[sl, sl].square().sum()) / d_norm2
                               for g, sl in groups.items()}
    result["update"] = update
    return result


def analyze_weights(weights: Mapping[str, torch.Tensor], rank: int,
                    tuned: Mapping[str, torch.Tensor] | None = None,
                    progress: Callable[[int, int, str], None] | None = None) -> dict[str, Any]:
    """:func:`layer_spectrum` of every named weight (``tuned`` keyed alike, if given)."""
    if tuned is not None:
        missing = sorted(set(weights) - set(tuned))
        if missing:
            raise ValueError(f"the fine-tuned weights lack {missing[:6]}")
    layers = {}
    for i, (name, w) in enumerate(weights.items()):
        if progress is not None:
            progress(i, len(weights), name)
        layers[name] = layer_spectrum(w, rank, None if tuned is None else tuned[name])
    return {"rank": rank, "groups": list(GROUPS), "layers": layers}
