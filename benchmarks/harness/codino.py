"""Benchmark 5: one Co-DINO training step, SoMA vs full fine-tuning (time and peak memory ratios).

The whole detector is built from the repository's configs (`T`: the tests' tiny Co-DINO at 128 px;
`S`/`B`: ViT-S / ViT-B taps under the official head at 256 px with 300 queries; `L`: the official
`configs/dwd_soma.yaml`, ViT-L/16 at 1024, meant for a GPU), fed a fixed batch of synthetic images
with three boxes each, and stepped with the recipe's AdamW groups and clipping. Repetitions of the
two methods are interleaved in one process; peak memory comes from a fresh child process per method
on CPU (resident set) or `torch.cuda.max_memory_allocated` on a GPU. `SOLVER.AMP` (bf16) is
honoured on CUDA through `--amp`.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from functools import partial

import torch
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from .measure import Timer, measure_step_memory, method_rows, run_interleaved, summarize
from .report import MEM_VS_FULL, STEP_COLUMNS, make_result, render_columns

__all__ = ["CODINO_PRESETS", "CoDINOTrainCase", "codino_table", "run_codino_benchmark"]

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_HEAD_256 = ["INPUT.IMAGE_SIZE", "256", "MODEL.CODINO.CROP_SIZE", "256", "MODEL.VIT.IMG_SIZE",
             "256", "MODEL.CODINO.NUM_QUERIES", "300", "MODEL.CODINO.TEST_TOPK", "300"]
CODINO_PRESETS: dict[str, tuple[str, list[str], int]] = {
    "T": ("configs/test/tiny_codino.yaml", [], 2),
    "S": ("configs/dwd_soma.yaml", ["MODEL.VIT.ARCH", "vit_s", "MODEL.VIT.OUT_INDICES",
                                    "[2, 5, 8, 11]", "MODEL.SOMA.START_BLOCK", "4", *_HEAD_256], 2),
    "B": ("configs/dwd_soma.yaml", ["MODEL.VIT.ARCH", "vit_b", "MODEL.VIT.OUT_INDICES",
                                    "[2, 5, 8, 11]", "MODEL.SOMA.START_BLOCK", "4", *_HEAD_256], 2),
    "L": ("configs/dwd_soma.yaml", [], 2),
}
METHODS = {"soma": "soma", "full": "full_finetune"}
LABELS = {"soma": "SoMA + Co-DINO", "full": "full fine-tuning + Co-DINO"}


class CoDINOTrainCase:
    """One method's detector, optimizer (recipe groups + clipping) and fixed batch."""

    def __init__(self, size: str, method: str, device: str = "cpu", seed: int = 0,
                 amp: bool = False, extra_opts: tuple[str, ...] = ()):
        from soma_d2.config import build_cfg  # registers soma_codino (projects/CoDINO)
        from soma_d2.solver import build_optimizer

        config, opts, batch = CODINO_PRESETS[size]
        cfg = build_cfg(os.path.join(_REPO, config),
                        [*opts, "MODEL.SOMA.MODE", METHODS[method], "MODEL.DEVICE", device,
                         "DATASETS.TRAIN", "()", "DATASETS.TEST", "()", *extra_opts])
        torch.manual_seed(seed)
        self.device = torch.device(device)
        self.amp = amp and self.device.type == "cuda"
        self.model = build_model(cfg).train()
        self.optimizer = build_optimizer(cfg, self.model)
        self.trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        side = int(cfg.INPUT.IMAGE_SIZE)
        gen = torch.Generator().manual_seed(seed + 1)
        boxes = torch.tensor([[0.1, 0.1, 0.4, 0.5], [0.5, 0.3, 0.9, 0.8], [0.2, 0.6, 0.35, 0.9]])
        self.batch = []
        for _ in range(batch):
            inst = Instances((side, side))
            inst.gt_boxes = Boxes(boxes * side)
            inst.gt_classes = torch.tensor([0, 2, 4])
            self.batch.append({"image": torch.rand(3, side, side, generator=gen) * 255,
                               "instances": inst, "image_size": (side, side)})
        self.storage = EventStorage(0)

    def step(self) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        with self.storage, torch.autocast(self.device.type, torch.bfloat16, enabled=self.amp):
            losses = self.model(self.batch)
        loss = sum(losses.values())
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())


def _memory(size: str, method: str, steps: int, device: str, seed: int, amp: bool) -> dict:
    return measure_step_memory(partial(CoDINOTrainCase, size, method, seed=seed, amp=amp), steps,
                               device, preload=["benchmarks.harness.codino"])


def run_codino_benchmark(size: str, repeats: int = 4, device: str = "cpu", seed: int = 0,
                         amp: bool = False, progress: Callable[[str], None] | None = None
                         ) -> dict:
    """Step time (interleaved, after one warm-up step) and peak memory of SoMA and full
    fine-tuning on the same Co-DINO; ratios against full fine-tuning."""
    if size not in CODINO_PRESETS:
        raise ValueError(f"size {size!r} is not one of {list(CODINO_PRESETS)}")
    memory = {m: _memory(size, m, 2, device, seed, amp) for m in METHODS}
    cases = {m: CoDINOTrainCase(size, m, device, seed, amp) for m in METHODS}

    def timed(case: CoDINOTrainCase) -> Callable[[], float]:
        def run() -> float:
            with Timer(case.device) as t:
                case.step()
            return t.seconds
        return run

    samples = run_interleaved({m: timed(c) for m, c in cases.items()}, repeats=repeats,
                              warmup=1, progress=progress)
    batch = CODINO_PRESETS[size][2]
    rows = method_rows(METHODS, LABELS, samples, memory, lambda m: {
        "images_per_s": batch / summarize(samples[m])["median"],
        "trainable_params": cases[m].trainable})
    config, opts, _ = CODINO_PRESETS[size]
    settings = {"size": size, "config": config, "overrides": opts, "batch": batch,
                "device": device, "repeats": repeats, "amp_bf16": bool(amp and device == "cuda"),
                "memory_method": memory["full"]["method_note"]}
    result = make_result("codino", f"Co-DINO training step ({size}: {config}), batch {batch}",
                         settings, "full", "s/step", False, rows)
    result["notes"].append("The detector (neck, transformer, auxiliary heads) trains in full in "
                           "both rows; only the ViT differs (SoMA adapters on blocks >= "
                           "START_BLOCK vs every ViT weight).")
    return result


def codino_table(result: dict) -> str:
    return render_columns(result, [*STEP_COLUMNS,
                                   ("img/s", lambda r: f"{r['images_per_s']:.2f}"),
                                   ("peak mem MiB", lambda r: f"{r['peak_mem_mib']:.0f}"),
                                   MEM_VS_FULL])
