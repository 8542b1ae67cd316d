"""Run a selection of benchmarks at one size and render them as a JSON-ready report and markdown.

Sizes: ``T`` (smoke test: tiny shapes, seconds), ``S`` (quick look: ViT-S training/inference,
ViT-B target set for the decomposition), ``B`` (the reference CPU run: ViT-L target set for the
decomposition as the issue defines it, ViT-B/16 at 224 px for training and inference, the demo
detector for the data pipeline) and ``L`` (ViT-L/16 at 1024 px for training and inference, for a
GPU). The report carries the machine description and the load average before and after, so a
reader can judge how quiet the machine was.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .data import DATA_PRESETS, data_table, run_data_benchmark
from .infer import INFER_PRESETS, infer_table, run_infer_benchmark
from .measure import machine_info
from .svd import SVD_PRESETS, run_svd_benchmark, svd_table
from .train import TRAIN_PRESETS, run_train_benchmark, train_table

__all__ = ["BENCHMARKS", "DEFAULT_REPEATS", "SIZES", "check_arguments", "format_markdown",
           "format_tables", "run_benchmarks"]

BENCHMARKS = ("svd", "cold_build", "train", "infer", "data", "mask2former", "codino", "checkpoint")
SIZES = ("T", "S", "B", "L")
DEFAULT_REPEATS = {"svd": 3, "cold_build": 3, "train": 8, "infer": 16, "data": 4,
                   "mask2former": 4, "codino": 4, "checkpoint": 2}


def _mask2former_table(result: dict) -> str:
    from .mask2former import mask2former_table

    return mask2former_table(result)


def _cold_build_table(result: dict) -> str:
    from .cold_build import cold_build_table

    return cold_build_table(result)


def _codino_table(result: dict) -> str:
    from .codino import codino_table

    return codino_table(result)


def _checkpoint_table(result: dict) -> str:
    from .checkpointing import checkpoint_table

    return checkpoint_table(result)


TABLES: dict[str, Callable[[dict], str]] = {
    "svd": svd_table, "cold_build": _cold_build_table, "train": train_table, "infer": infer_table, "data": data_table,
    "mask2former": _mask2former_table,
    "codino": _codino_table,
    "checkpoint": _checkpoint_table,
}


def _run_one(name: str, size: str, device: str, repeats: int,
             progress: Callable[[str], None] | None, memory_only: bool = False,
             time_only: bool = False) -> dict[str, Any]:
    if name == "svd":
        return run_svd_benchmark(SVD_PRESETS[size], repeats, device, progress=progress)
    if name == "cold_build":  # ViT-L at every size but T (a ViT-S smoke test)
        from .cold_build import run_cold_build_benchmark

        return run_cold_build_benchmark(repeats, arch="vit_s" if size == "T" else "vit_l",
                                        progress=progress)
    if name == "train":
        return run_train_benchmark(TRAIN_PRESETS[size], repeats, device, progress=progress)
    if name == "infer":
        return run_infer_benchmark(INFER_PRESETS[size], repeats, device, progress=progress)
    if name == "mask2former":
        from .mask2former import M2F_PRESETS, run_mask2former_benchmark

        return run_mask2former_benchmark(M2F_PRESETS[size], repeats, device, progress=progress)
    if name == "codino":
        from .codino import run_codino_benchmark

        return run_codino_benchmark(size, repeats, device, progress=progress)
    if name == "checkpoint":
        from .checkpointing import run_checkpoint_benchmark

        return run_checkpoint_benchmark(size, repeats, device, progress=progress,
                                        memory_only=memory_only, time_only=time_only)
    return run_data_benchmark(DATA_PRESETS[size], repeats, device, progress=progress)


def check_arguments(names: Sequence[str], size: str, device: str, repeats: int | None) -> None:
    """Reject a bad selection before anything runs; messages name the option and the value."""
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown or not names:
        raise ValueError(f"unknown benchmark(s) {unknown or list(names)}; accepted: "
                         f"{list(BENCHMARKS)} (or 'all')")
    if size not in SIZES:
        raise ValueError(f"--size {size!r} is not one of {list(SIZES)}")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"--device {device!r} must be 'cpu' or 'cuda'")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: torch.cuda.is_available() is False on this machine")
    if repeats is not None and (not isinstance(repeats, int) or repeats < 1):
        raise ValueError(f"--repeats must be an int >= 1, got {repeats!r}")


def run_benchmarks(names: Sequence[str], size: str = "B", device: str = "cpu",
                   repeats: int | None = None, command: str = "",
                   progress: Callable[[str], None] | None = None,
                   on_result: Callable[[dict], None] | None = None,
                   memory_only: bool = False, time_only: bool = False) -> dict[str, Any]:
    """Run ``names`` (subset of :data:`BENCHMARKS`, in that order) and return the full report:
    ``{"meta": {...}, "results": {name: result}}``. ``repeats`` overrides every benchmark's
    default; ``on_result`` is called with each result as soon as it is ready; ``memory_only``
    (``time_only``) makes the checkpoint benchmark skip its timed steps (its memory children)."""
    check_arguments(names, size, device, repeats)
    if size == "L" and device == "cpu" and progress is not None:
        progress("warning: size L (ViT-L/16 at 1024 px) is meant for a GPU; on a CPU a single "
                 "training step takes minutes")
    meta: dict[str, Any] = {"command": command, "size": size, "device": device,
                            "machine": machine_info(device)}
    results: dict[str, Any] = {}
    start = time.perf_counter()
    for name in BENCHMARKS:
        if name not in names:
            continue
        began = time.perf_counter()
        result = _run_one(name, size, device, repeats or DEFAULT_REPEATS[name], progress,
                          memory_only, time_only)
        result["wall_s"] = time.perf_counter() - began
        results[name] = result
        if on_result is not None:
            on_result(result)
    meta["wall_s"] = time.perf_counter() - start
    meta["loadavg_end"] = machine_info(device)["loadavg"]
    return {"meta": meta, "results": results}


def format_tables(report: dict[str, Any]) -> str:
    """Every benchmark's table, in run order."""
    return "\n\n".join(TABLES[name](result) for name, result in report["results"].items())


def format_markdown(report: dict[str, Any]) -> str:
    """A self-contained markdown page: command, machine, then the tables."""
    meta = report["meta"]
    machine = meta["machine"]
    load = machine.get("loadavg") or []
    load_end = meta.get("loadavg_end") or []
    lines = [
        "## Command", "", "```", meta["command"] or "(library call)", "```", "",
        "## Machine", "",
        f"- nproc: {machine['nproc']}; torch {machine['torch']} "
        f"({machine['torch_threads']} threads); Python {machine['python']}; "
        f"{machine['platform']}",
        f"- load average (1/5/15 min) at start: {' / '.join(f'{x:.2f}' for x in load)}; "
        f"at end: {' / '.join(f'{x:.2f}' for x in load_end)}",
        f"- started {machine['time']}; total wall time {meta.get('wall_s', 0):.0f} s",
    ]
    if machine.get("gpu"):
        lines.append(f"- GPU: {machine['gpu']}")
    if machine.get("lscpu_head"):
        lines += ["", "```", *machine["lscpu_head"], "```"]
    lines += ["", "## Results", "", format_tables(report), ""]
    return "\n".join(lines)
