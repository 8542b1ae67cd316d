"""Benchmark 7: activation checkpointing of the Co-DINO training step (issue #23): peak memory and
step time with `MODEL.VIT.CHECKPOINT_BLOCKS -1` (every trainable ViT block) and with it plus
`MODEL.CODINO.ENCODER_CHECKPOINT -1` (every encoder layer), against no checkpointing.

The detector, batch and optimizer are benchmark 5's (`codino.CoDINOTrainCase`, SoMA mode; the
official head at the preset's canvas, 2 images as on one official GPU). `L` is ViT-L/16 with the
official head (900 queries): at the official 1024 px canvas on a GPU, at 256 px on a CPU (on the
shared 23 GB CPU machine of the reference run, the 512 px and 384 px children were killed by the
out-of-memory killer, at 12 GB and 5 GB resident, while other jobs ran). Peak memory is measured as in every detector
benchmark (`measure_step_memory`: fresh child process and resident set on CPU,
`torch.cuda.max_memory_allocated` on a GPU); step times are interleaved repetitions on one model
in one process, its checkpointing switched before each step (`set_checkpoint_blocks`,
`checkpoint_layers`).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

from .codino import CODINO_PRESETS, CoDINOTrainCase
from .measure import Timer, measure_step_memory, method_rows, run_interleaved
from .report import fmt_ratio, fmt_stats, make_result, render_columns

__all__ = ["CHECKPOINT_VARIANTS", "checkpoint_opts", "checkpoint_table", "run_checkpoint_benchmark"]

CHECKPOINT_VARIANTS: dict[str, tuple[str, ...]] = {
    "off": (),
    "vit": ("MODEL.VIT.CHECKPOINT_BLOCKS", "-1"),
    "vit_enc": ("MODEL.VIT.CHECKPOINT_BLOCKS", "-1", "MODEL.CODINO.ENCODER_CHECKPOINT", "-1"),
}
LABELS = {"off": "no checkpointing", "vit": "ViT blocks (CHECKPOINT_BLOCKS -1)",
          "vit_enc": "ViT blocks + encoder (ENCODER_CHECKPOINT -1)"}
CPU_L_CANVAS = 256
_CANVAS_CPU_L = ("INPUT.IMAGE_SIZE", str(CPU_L_CANVAS), "MODEL.CODINO.CROP_SIZE", str(CPU_L_CANVAS),
                 "MODEL.VIT.IMG_SIZE", str(CPU_L_CANVAS))


def checkpoint_opts(size: str, device: str, variant: str) -> tuple[str, ...]:
    """Config overrides of one variant on top of the `CODINO_PRESETS[size]` detector."""
    canvas = _CANVAS_CPU_L if size == "L" and device != "cuda" else ()
    return (*canvas, *CHECKPOINT_VARIANTS[variant])


def _case(size: str, device: str, variant: str, seed: int) -> Callable[[str], CoDINOTrainCase]:
    return partial(CoDINOTrainCase, size, "soma", seed=seed,
                   extra_opts=checkpoint_opts(size, device, variant))


def run_checkpoint_benchmark(size: str, repeats: int = 2, device: str = "cpu", seed: int = 0,
                             progress: Callable[[str], None] | None = None,
                             memory_only: bool = False, time_only: bool = False) -> dict:
    """Peak memory (one fresh process per variant, 2 steps) and interleaved step times of the
    three variants; ratios against no checkpointing. `memory_only` skips the timed steps (a
    ViT-L step takes minutes on a CPU); the time columns then read '-'. `time_only` skips the
    memory children (their columns read '-')."""
    if size not in CODINO_PRESETS:
        raise ValueError(f"size {size!r} is not one of {list(CODINO_PRESETS)}")
    memory = {v: {"peak_bytes": math.nan, "method_note": "not measured (time only)"}
              for v in CHECKPOINT_VARIANTS}
    for variant in () if time_only else reversed(CHECKPOINT_VARIANTS):  # the smallest first: it fits when others do not
        memory[variant] = measure_step_memory(_case(size, device, variant, seed), 2, device,
                                              preload=["benchmarks.harness.codino"])
        if progress is not None:
            progress(f"peak memory {variant}: {memory[variant]['peak_bytes'] / 2**20:.0f} MiB")
    if memory_only:
        return _memory_result(size, device, repeats, memory)
    case = _case(size, device, "off", seed)(device)
    net, encoder = case.model.backbone.net, case.model.query_head.encoder

    def timed(variant: str) -> Callable[[], float]:
        def run() -> float:
            net.set_checkpoint_blocks(-1 if variant != "off" else 0)
            encoder.checkpoint_layers = len(encoder.layers) if variant == "vit_enc" else 0
            with Timer(case.device) as t:
                case.step()
            return t.seconds
        return run

    samples = run_interleaved({v: timed(v) for v in CHECKPOINT_VARIANTS}, repeats=repeats,
                              warmup=1, progress=progress)
    rows = method_rows(list(CHECKPOINT_VARIANTS), LABELS, samples, memory,
                       lambda v: {"trainable_params": case.trainable}, baseline="off")
    config, opts, batch = CODINO_PRESETS[size]
    canvas = int(case.batch[0]["image"].shape[-1])
    settings = {"size": size, "config": config, "overrides": [*opts, *checkpoint_opts(
        size, device, "off")], "canvas": canvas, "batch": batch, "device": device,
        "repeats": repeats, "memory_method": memory["off"]["method_note"]}
    result = make_result("checkpoint", f"Activation checkpointing, Co-DINO training step ({size}: "
                         f"{config}, {canvas} px canvas), batch {batch}", settings, "off",
                         "s/step", False, rows)
    result["notes"].append("SoMA mode: blocks below START_BLOCK run under no_grad and store no "
                           "activations with or without checkpointing; the checkpointed ViT "
                           "blocks are the trainable ones.")
    return result


def _memory_result(size: str, device: str, repeats: int, memory: dict) -> dict:
    base = memory["off"]["peak_bytes"]
    rows = [{"method": v, "label": LABELS[v], "stats": None, "ratio": None,
             "peak_mem_mib": memory[v]["peak_bytes"] / 2**20,
             "mem_ratio": memory[v]["peak_bytes"] / base} for v in CHECKPOINT_VARIANTS]
    config, opts, batch = CODINO_PRESETS[size]
    canvas = CPU_L_CANVAS if size == "L" and device != "cuda" else None
    settings = {"size": size, "config": config, "overrides": [*opts, *checkpoint_opts(
        size, device, "off")], "canvas": canvas, "batch": batch, "device": device,
        "memory_only": True, "memory_method": memory["off"]["method_note"]}
    title = (f"Activation checkpointing, Co-DINO training step ({size}: {config}"
             f"{f', {canvas} px canvas' if canvas else ''}), batch {batch}, peak memory only")
    return make_result("checkpoint", title, settings, "off", "s/step", False, rows)


def _fmt(value: float, pattern: str) -> str:
    return "-" if math.isnan(value) else pattern.format(value)


def checkpoint_table(result: dict) -> str:
    return render_columns(result, [
        ("variant", lambda r: r["label"]),
        ("step s, median [min-max]", lambda r: fmt_stats(r["stats"]) if r["stats"] else "-"),
        ("time vs off", fmt_ratio),
        ("peak mem MiB", lambda r: _fmt(r["peak_mem_mib"], "{:.0f}")),
        ("mem vs off", lambda r: _fmt(r["mem_ratio"], "{:.2f}x")),
    ])
