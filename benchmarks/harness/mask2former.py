"""Benchmark: one SoMA + Mask2Former training step, SoMA vs full fine-tuning, and the point loss.

A step is what `SoMATrainer` runs per iteration on the real model built from a config: forward of
the raw-tap ViT + pixel decoder + masked-attention decoder, matching and the point-sampled losses
on every prediction set, backward, AdamW with the recipe's parameter groups. SoMA and the official
full fine-tuning baseline (backbone lr x0.01, norms / layer scales / embeddings frozen) are timed
in one process with interleaved repetitions; peak memory per method comes from a fresh child
process on CPU (resident set) or `torch.cuda.max_memory_allocated`. The loss share is the time
spent in the criterion's forward (Hungarian matching on 12,544 uniform points + importance
sampling of 12,544 points per matched mask, 10 prediction sets) over the step time.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial

import torch

from .measure import Timer, measure_step_memory, method_rows, run_interleaved
from .report import MEM_VS_FULL, STEP_COLUMNS, fmt_num, goal, make_result, render_columns

__all__ = ["M2F_PRESETS", "M2FSpec", "mask2former_table", "run_mask2former_benchmark"]

METHODS = ("soma", "full")
LABELS = {"soma": "SoMA", "full": "full fine-tuning (official baseline)"}


@dataclass(frozen=True)
class M2FSpec:
    """Model size, crop and batch of one preset (head sizes: official unless `tiny_head`)."""

    arch: str
    embed_dim: int
    depth: int
    heads: int
    out_indices: tuple[int, ...]
    start_block: int
    crop: int
    batch: int
    tiny_head: bool
    num_points: int = 12544


M2F_PRESETS = {
    "T": M2FSpec("vit_s", 64, 4, 2, (0, 1, 2, 3), 2, 96, 2, True),
    "S": M2FSpec("vit_s", 384, 12, 6, (3, 5, 7, 11), 4, 128, 2, False),
    "B": M2FSpec("vit_b", 768, 12, 12, (3, 5, 7, 11), 4, 256, 2, False),
    "L": M2FSpec("vit_l", 1024, 24, 16, (7, 11, 15, 23), 8, 512, 4, False),
}


def _cfg(spec: M2FSpec, method: str, device: str):
    from pathlib import Path

    from soma_d2.config import build_cfg

    root = Path(__file__).resolve().parents[2]
    opts = ["MODEL.DEVICE", device, "MODEL.VIT.ARCH", spec.arch,
            "MODEL.VIT.EMBED_DIM", str(spec.embed_dim), "MODEL.VIT.DEPTH", str(spec.depth),
            "MODEL.VIT.NUM_HEADS", str(spec.heads), "MODEL.VIT.IMG_SIZE", str(spec.crop),
            "MODEL.VIT.OUT_INDICES", str(list(spec.out_indices)),
            "MODEL.SOMA.START_BLOCK", str(spec.start_block), "MODEL.SOMA.RANK", "16",
            "MODEL.SOMA.ALPHA", "16.0", "MODEL.MASK2FORMER.TRAIN_NUM_POINTS", str(spec.num_points),
            "MODEL.EMA.ENABLED", "False"]
    if method == "full":
        opts += ["MODEL.SOMA.MODE", "full_finetune", "SOLVER.BACKBONE_LR_MULT", "0.01",
                 "MODEL.MASK2FORMER.FREEZE_BACKBONE_PATTERNS",
                 "['norm', 'ls1', 'ls2', 'pos_embed', 'patch_embed']"]
    if not spec.tiny_head:
        opts += ["MODEL.MASK2FORMER.HIDDEN_DIM", "256", "MODEL.MASK2FORMER.MASK_DIM", "256",
                 "MODEL.MASK2FORMER.NUM_GROUPS", "32", "MODEL.MASK2FORMER.NUM_HEADS", "8",
                 "MODEL.MASK2FORMER.NUM_QUERIES", "100", "MODEL.MASK2FORMER.ENC_LAYERS", "6",
                 "MODEL.MASK2FORMER.ENC_FFN_DIM", "1024", "MODEL.MASK2FORMER.DEC_LAYERS", "9",
                 "MODEL.MASK2FORMER.DEC_FFN_DIM", "2048"]
    return build_cfg(str(root / "configs" / "demo" / "synthetic_mask2former_semseg.yaml"), opts)


class StepCase:
    """One method's model, optimizer and fixed batch (random images, blocky label maps)."""

    def __init__(self, spec: M2FSpec, method: str, device: str = "cpu", seed: int = 0):
        from detectron2.modeling import build_model

        from soma_d2.solver.optimizer import build_optimizer

        torch.manual_seed(seed)
        cfg = _cfg(spec, method, device)
        self.model = build_model(cfg).train()
        self.optimizer = build_optimizer(cfg, self.model)
        gen = torch.Generator().manual_seed(seed + 1)
        s = spec.crop
        labels = torch.randint(0, 19, (spec.batch, s // 16, s // 16), generator=gen)
        labels = labels.repeat_interleave(16, 1).repeat_interleave(16, 2)
        self.batch = [{"image": torch.randint(0, 256, (3, s, s), generator=gen).float(),
                       "sem_seg": labels[i]} for i in range(spec.batch)]
        self.loss_seconds = 0.0
        crit = self.model.sem_seg_head.criterion
        dev = torch.device(device)

        def start(*_):
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            self._t0 = time.perf_counter()

        def stop(*_):
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            self.loss_seconds += time.perf_counter() - self._t0

        crit.register_forward_pre_hook(start)
        crit.register_forward_hook(stop)

    def trainable(self) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)

    def step(self) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        losses = self.model(self.batch)
        total = sum(losses.values())
        total.backward()
        self.optimizer.step()
        return float(total.detach())


def _memory(spec: M2FSpec, method: str, device: str, seed: int) -> dict:
    return measure_step_memory(partial(StepCase, spec, method, seed=seed), 2, device,
                               preload=["benchmarks.harness.mask2former"])


def run_mask2former_benchmark(spec: M2FSpec, repeats: int = 4, device: str = "cpu",
                              seed: int = 0, progress: Callable[[str], None] | None = None
                              ) -> dict:
    """Step time, loss share and peak memory of SoMA and full fine-tuning (ratios to full)."""
    memory = {m: _memory(spec, m, device, seed) for m in METHODS}
    cases = {m: StepCase(spec, m, device, seed) for m in METHODS}
    dev = torch.device(device)
    loss_share: dict[str, list[float]] = {m: [] for m in METHODS}

    def timed(method: str) -> Callable[[], float]:
        case = cases[method]

        def run() -> float:
            case.loss_seconds = 0.0
            with Timer(dev) as t:
                case.step()
            loss_share[method].append(case.loss_seconds / t.seconds)
            return t.seconds
        return run

    samples = run_interleaved({m: timed(m) for m in METHODS}, repeats=repeats, warmup=1,
                              progress=progress)

    def extra(method: str) -> dict:
        share = loss_share[method][-repeats:]
        return {"trainable_params": cases[method].trainable(),
                "loss_share": sorted(share)[len(share) // 2]}

    rows = method_rows(METHODS, LABELS, samples, memory, extra)
    by = {r["method"]: r for r in rows}
    settings = {**asdict(spec), "device": str(dev), "repeats": repeats, "seed": seed,
                "memory_method": memory["full"]["method_note"]}
    result = make_result(
        "mask2former", f"SoMA + Mask2Former training step, ViT d={spec.embed_dim} x {spec.depth} "
        f"at {spec.crop} px, batch {spec.batch}, {spec.num_points} points", settings, "full",
        "s/step", False, rows)
    result["goals"].append(goal("criterion forward share of the SoMA step",
                                by["soma"]["loss_share"], "<=", 0.5))
    result["notes"].append(
        "criterion share = time in the loss module's forward (matching on uniform points + "
        "importance-sampled point losses over all prediction sets) / step time; the backward of "
        "the point losses is part of the step but not of the share.")
    return result


def mask2former_table(result: dict) -> str:
    return render_columns(result, [*STEP_COLUMNS,
                                   ("criterion share", lambda r: f"{100 * r['loss_share']:.0f} %"),
                                   ("peak mem MiB", lambda r: fmt_num(r["peak_mem_mib"])),
                                   MEM_VS_FULL])
