"""Benchmark 3: inference cost of a SoMA model, merged and unmerged, against the plain ViT.

After training, :func:`~soma_d2.soma.merge_soma` folds every adapter into a plain ``nn.Linear``,
so the merged model should cost exactly what the plain ViT costs; the unmerged model pays for the
extra low-rank products. All three, and an identical copy of the plain ViT (an A/A control that
shows the machine's noise floor), run the same input in eval mode under ``inference_mode``,
repetitions interleaved. The outputs are compared too: at step 0 the adapted model computes the
pretrained function, so all three must agree to float32 rounding.
"""
from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import asdict

import torch

from soma_d2.soma import SoMALinear, merge_soma

from .measure import Timer, paired_ratio, run_interleaved, summarize
from .report import fmt_num, fmt_ratio, fmt_stats, goal, make_result, render_columns
from .vit_cases import VIT_PRESETS, ViTSpec, build_vit, configure_method

__all__ = ["INFER_PRESETS", "build_inference_models", "infer_table", "run_infer_benchmark"]

INFER_PRESETS = VIT_PRESETS
LABELS = {"plain": "plain ViT", "plain_copy": "plain ViT, a copy (A/A control)",
          "soma_merged": "SoMA merged (merge_soma)",
          "soma_unmerged": "SoMA unmerged (adapters live)"}


def build_inference_models(spec: ViTSpec, device: str = "cpu", seed: int = 0
                           ) -> dict[str, torch.nn.Module]:
    """``plain``, ``plain_copy``, ``soma_merged`` and ``soma_unmerged`` ViTs from the same
    weights, in eval mode. The copy of the plain ViT is an A/A control: it computes exactly what
    the plain ViT computes, so its measured ratio shows the noise floor of the machine."""
    plain = build_vit(spec, seed, device)
    unmerged = copy.deepcopy(plain)
    configure_method(unmerged, spec, "soma")
    merged = merge_soma(copy.deepcopy(unmerged))
    models = {"plain": plain, "plain_copy": copy.deepcopy(plain), "soma_merged": merged,
              "soma_unmerged": unmerged}
    for model in models.values():
        model.eval()
    return models


def run_infer_benchmark(spec: ViTSpec, repeats: int = 16, device: str = "cpu", iters: int = 1,
                        seed: int = 0, progress: Callable[[str], None] | None = None) -> dict:
    """Forward time of the three models (``iters`` forwards per repetition, interleaved) and
    the largest output difference of each to the plain ViT; ratios against the plain ViT."""
    dev = torch.device(device)
    models = build_inference_models(spec, device, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    images = torch.randn(spec.batch, 3, spec.img_size, spec.img_size, generator=gen).to(dev)
    with torch.inference_mode():
        outputs = {name: m.forward_features(images) for name, m in models.items()}
    scale = float(outputs["plain"].abs().max())

    def timed(model: torch.nn.Module) -> Callable[[], float]:
        def run() -> float:
            with torch.inference_mode(), Timer(dev) as t:
                for _ in range(iters):
                    model.forward_features(images)
            return t.seconds / iters
        return run

    samples = run_interleaved({n: timed(m) for n, m in models.items()}, repeats=repeats,
                              warmup=1, progress=progress)
    rows = []
    for name, model in models.items():
        diff = float((outputs[name] - outputs["plain"]).abs().max()) / scale
        rows.append({"method": name, "label": LABELS[name], "stats": summarize(samples[name]),
                     **paired_ratio(samples[name], samples["plain"]),
                     "max_rel_diff_vs_plain": diff,
                     "images_per_s": spec.batch / summarize(samples[name])["median"],
                     "params": sum(p.numel() for p in model.parameters()),
                     "soma_layers": sum(isinstance(m, SoMALinear) for m in model.modules())})
    settings = {**asdict(spec), "start_block": spec.first_adapted_block, "device": str(dev),
                "repeats": repeats, "iters_per_repeat": iters, "seed": seed}
    result = make_result("infer", f"Inference, ViT/16 d={spec.embed_dim} x {spec.depth} blocks "
                         f"at {spec.img_size} px, batch {spec.batch}", settings, "plain",
                         "s/forward", False, rows)
    by = {r["method"]: r for r in rows}
    result["goals"].append(goal("merged SoMA time / plain ViT's", by["soma_merged"]["ratio"],
                                "<=", 1.02))
    control = by["plain_copy"]
    result["notes"].append(
        f"A/A control: an identical copy of the plain ViT measured {control['ratio']:.2f}x "
        f"[{control['ratio_min']:.2f}-{control['ratio_max']:.2f}] of the plain ViT, the noise "
        "floor of this machine for this measurement. The merged model has the plain ViT's "
        "modules and parameter count (no SoMALinear left), i.e. the same operations.")
    result["notes"].append(
        "max rel diff: largest |output - plain output| / max|plain output| of forward_features "
        "at step 0 (the adapted model computes the pretrained function).")
    return result


def infer_table(result: dict) -> str:
    """The inference benchmark as a markdown table with goals and notes."""
    return render_columns(result, [
        ("model", lambda r: r["label"]),
        ("parameters", lambda r: f"{r['params']:,}"),
        ("SoMALinear layers", lambda r: str(r["soma_layers"])),
        ("forward s, median [min-max]", lambda r: fmt_stats(r["stats"])),
        ("time vs plain", fmt_ratio),
        ("images/s", lambda r: fmt_num(r["images_per_s"])),
        ("max rel diff vs plain", lambda r: fmt_num(r["max_rel_diff_vs_plain"])),
    ])
