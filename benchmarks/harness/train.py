"""Benchmark 2: cost of one training step, SoMA vs LoRA vs full fine-tuning vs frozen backbone.

A step is what a trainer does per iteration: forward of the ViT (frozen blocks under
``no_grad``), a small linear head and an MSE loss on the final tokens, backward, and an AdamW step
on the trainable parameters (head included). Time is measured in one process with the methods'
repetitions interleaved. Peak memory is measured per method in a fresh child process on CPU
(resident set, from just before the model is built to the peak over the steps, so it includes
weights, gradients, optimizer state and activations -- like ``torch.cuda.max_memory_allocated``,
which is used on a GPU); the optimizer state is the bytes AdamW holds after a step.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict

import torch
import torch.nn.functional as F
from torch import nn

from .measure import MemoryProbe, MiB, Timer, paired_ratio, run_interleaved, run_isolated, summarize
from .report import MEM_VS_FULL, STEP_COLUMNS, fmt_num, fmt_ratio, goal, make_result, render_columns
from .vit_cases import METHODS, VIT_PRESETS, ViTSpec, build_vit, configure_method

__all__ = ["TRAIN_PRESETS", "TrainCase", "measure_train_memory", "run_train_benchmark",
           "train_table"]

TRAIN_PRESETS = VIT_PRESETS
HEAD_DIM = 64
LABELS = {"soma": "SoMA (minor components)", "lora": "LoRA (same ranks, same blocks)",
          "full": "full fine-tuning", "frozen": "frozen backbone (head only)"}


class TrainCase:
    """One method's model, head, AdamW optimizer and fixed batch, ready to take steps."""

    def __init__(self, spec: ViTSpec, method: str, device: torch.device | str = "cpu",
                 seed: int = 0) -> None:
        self.device = torch.device(device)
        self.vit = build_vit(spec, seed, self.device)
        self.trainable_backbone = configure_method(self.vit, spec, method)
        self.vit.train()
        self.head = nn.Linear(spec.embed_dim, HEAD_DIM).to(self.device)
        params = [p for p in self.vit.parameters() if p.requires_grad]
        params += list(self.head.parameters())
        self.optimizer = torch.optim.AdamW(params, lr=1e-6, weight_decay=0.05)
        gen = torch.Generator().manual_seed(seed + 1)
        self.images = torch.randn(spec.batch, 3, spec.img_size, spec.img_size,
                                  generator=gen).to(self.device)
        self.target = torch.randn(spec.batch, spec.tokens, HEAD_DIM, generator=gen).to(self.device)

    def step(self) -> float:
        """One training step; returns the loss."""
        self.optimizer.zero_grad(set_to_none=True)
        features = self.vit.forward_features(self.images)
        loss = F.mse_loss(self.head(features), self.target)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    def optimizer_state_bytes(self) -> int:
        """Bytes of the tensors AdamW keeps (moments and step counters)."""
        return sum(t.numel() * t.element_size() for state in self.optimizer.state.values()
                   for t in state.values() if isinstance(t, torch.Tensor))


def _memory_worker(spec: ViTSpec, method: str, steps: int, seed: int, threads: int) -> dict:
    """Child-process body: build, restart the peak, take ``steps`` steps, report the peak."""
    torch.set_num_threads(threads)
    probe = MemoryProbe()
    before = probe.current_bytes()
    case = TrainCase(spec, method, "cpu", seed)
    built = probe.current_bytes()
    probe.reset_peak()
    for _ in range(steps):
        case.step()
    peak = probe.peak_bytes()
    return {"peak_bytes": peak - before, "static_bytes": built - before,
            "optimizer_state_bytes": case.optimizer_state_bytes(), "method_note": probe.method}


def measure_train_memory(spec: ViTSpec, method: str, steps: int = 2, device: str = "cpu",
                         seed: int = 0) -> dict:
    """Peak memory of ``steps`` training steps of one method (fresh process on CPU; peak
    allocated memory on CUDA), counted from before the model exists."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return run_isolated(_memory_worker, spec, method, steps, seed, torch.get_num_threads(),
                            preload=["scipy.linalg", "benchmarks.harness.train"])
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated(dev)
    case = TrainCase(spec, method, dev, seed)
    built = torch.cuda.memory_allocated(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    for _ in range(steps):
        case.step()
    torch.cuda.synchronize(dev)
    result = {"peak_bytes": torch.cuda.max_memory_allocated(dev) - before,
              "static_bytes": built - before,
              "optimizer_state_bytes": case.optimizer_state_bytes(),
              "method_note": "torch.cuda.max_memory_allocated"}
    del case
    torch.cuda.empty_cache()
    return result


def run_train_benchmark(spec: ViTSpec, repeats: int = 8, device: str = "cpu", steps: int = 1,
                        seed: int = 0, methods: tuple[str, ...] = METHODS,
                        progress: Callable[[str], None] | None = None) -> dict:
    """Step time (interleaved repetitions of ``steps`` steps each, after one warm-up step),
    peak memory and optimizer state of each method; ratios against full fine-tuning."""
    dev = torch.device(device)
    unknown = [m for m in methods if m not in METHODS]
    if unknown or "full" not in methods:
        raise ValueError(f"methods must be among {list(METHODS)} and include 'full', got "
                         f"{list(methods)}")
    memory = {}
    for method in methods:
        memory[method] = measure_train_memory(spec, method, max(steps, 2), device, seed)
        if progress is not None:
            progress(f"memory {method}: {memory[method]['peak_bytes'] / MiB:.0f} MiB")
    cases = {m: TrainCase(spec, m, dev, seed) for m in methods}

    def timed(case: TrainCase) -> Callable[[], float]:
        def run() -> float:
            with Timer(dev) as t:
                for _ in range(steps):
                    case.step()
            return t.seconds / steps
        return run

    samples = run_interleaved({m: timed(c) for m, c in cases.items()}, repeats=repeats,
                              warmup=1, progress=progress)
    rows = []
    for method in methods:
        case, mem = cases[method], memory[method]
        row = {"method": method, "label": LABELS[method], "stats": summarize(samples[method]),
               **paired_ratio(samples[method], samples["full"]),
               "trainable_params": case.trainable_backbone
               + sum(p.numel() for p in case.head.parameters()),
               "peak_mem_mib": mem["peak_bytes"] / MiB, "static_mem_mib": mem["static_bytes"] / MiB,
               "optimizer_state_mib": case.optimizer_state_bytes() / MiB}
        if "lora" in methods:
            vs = paired_ratio(samples[method], samples["lora"])
            row.update(ratio_lora=vs["ratio"], ratio_lora_min=vs["ratio_min"],
                       ratio_lora_max=vs["ratio_max"])
        rows.append(row)
    by = {r["method"]: r for r in rows}
    for row in rows:
        row["mem_ratio"] = row["peak_mem_mib"] / by["full"]["peak_mem_mib"]
    settings = {**asdict(spec), "start_block": spec.first_adapted_block, "tokens": spec.tokens,
                "device": str(dev), "repeats": repeats, "steps_per_repeat": steps,
                "seed": seed, "head_dim": HEAD_DIM, "optimizer": "AdamW(lr=1e-6, wd=0.05)",
                "memory_method": memory["full"]["method_note"]}
    result = make_result("train", f"Training step, ViT/16 d={spec.embed_dim} x {spec.depth} "
                         f"blocks at {spec.img_size} px, batch {spec.batch}", settings, "full",
                         "s/step", False, rows)
    if "soma" in by and "lora" in by:
        result["goals"].append(goal("SoMA step time / LoRA's", by["soma"]["ratio_lora"], "<=",
                                    1.05))
    if "soma" in by:
        result["goals"].append(goal("SoMA peak memory / full fine-tuning's",
                                    by["soma"]["mem_ratio"], "<=", 0.6))
    result["notes"].append(
        f"SoMA and LoRA adapt q, k, v, proj, fc1, fc2 of blocks {spec.first_adapted_block}-"
        f"{spec.depth - 1} at rank {spec.rank}; blocks before run under no_grad. Both use the "
        "same SoMALinear layers of the same shapes (only the initial A, B differ), so their time "
        "ratio also shows the noise floor. Peak memory: "
        f"{memory['full']['method_note']}, counted from before the model is built (model MiB: "
        "after building it, before the first step).")
    return result


def train_table(result: dict) -> str:
    """The training benchmark as a markdown table with goals and notes."""
    return render_columns(result, [
        *STEP_COLUMNS,
        ("time vs LoRA", lambda r: fmt_ratio(r, "ratio_lora")),
        ("peak mem MiB", lambda r: f"{r['peak_mem_mib']:.0f}"),
        MEM_VS_FULL,
        ("model MiB", lambda r: f"{r['static_mem_mib']:.0f}"),
        ("optimizer state MiB", lambda r: fmt_num(r["optimizer_state_mib"])),
    ])
