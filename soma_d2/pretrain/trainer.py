"""The pretraining loop: deterministic for a seed, resumable, with progress and ETA.

Everything random in a step (crop size, scenes, crops, conditions, mask) is drawn from a
generator seeded by (seed, step), and the model is initialised from the seed, so a run is a pure
function of its configuration and a resumed run continues exactly where the interrupted one
stopped. The state (student, EMA teacher, decoder, optimizer, step) is written atomically every
`checkpoint_every` steps; the product is the EMA teacher, in the official DINOv2 layout.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass

import numpy as np
import torch

from ..modeling.dinov3 import DinoV3VisionTransformer
from ..modeling.vit import DinoVisionTransformer
from .objective import CrossConditionMIM
from .official_layout import to_official_dinov3_state_dict, to_official_state_dict
from .scene_bank import SceneBank, render_scene_bank, sample_views

__all__ = ["FAMILIES", "PretrainConfig", "build_student", "pretrain"]

FAMILIES = ("dinov2", "dinov3")

STATE_FILE = "pretrain_state.pth"


@dataclass
class PretrainConfig:
    """Everything that defines a run (the ViT's shape must match the detector config's).

    The defaults are the run that made the shipped `pretrained/synthetic_vit_d192_l4.pth`.
    ``family`` "dinov3" pretrains a DINOv3-architecture ViT instead (RoPE, 4 storage tokens,
    LayerNorm eps 1e-5) and writes it in the official DINOv3 layout.
    """

    output: str = "pretrained/synthetic_vit_d192_l4.pth"
    work_dir: str = "output/pretrain_synthetic"
    steps: int = 2400
    seed: int = 0
    embed_dim: int = 192
    depth: int = 4
    num_heads: int = 3
    patch_size: int = 16
    image_size: int = 256
    layer_scale_init: float = 0.1
    num_scenes: int = 300
    crop_sides: tuple[int, ...] = (128, 128, 128, 192)
    tokens_per_step: int = 1024
    mask_ratio: float = 0.75
    decoder_dim: int = 128
    lr: float = 1.5e-3
    min_lr: float = 1e-5
    weight_decay: float = 0.05
    warmup_steps: int = 200
    ema_start: float = 0.99
    consistency_weight: float = 1.0
    checkpoint_every: int = 200
    log_every: int = 50
    family: str = "dinov2"

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {FAMILIES}, got {self.family!r}")
        bad = [s for s in self.crop_sides if s % self.patch_size or s > self.image_size]
        if bad:
            raise ValueError(f"crop_sides {bad} must be multiples of patch_size "
                             f"{self.patch_size} and <= image_size {self.image_size}")
        if self.steps < 1 or not 0.0 < self.mask_ratio < 1.0:
            raise ValueError(f"steps must be >= 1 and mask_ratio in (0, 1), got {self.steps}, "
                             f"{self.mask_ratio}")


def build_student(cfg: PretrainConfig) -> DinoVisionTransformer | DinoV3VisionTransformer:
    if cfg.family == "dinov3":
        return DinoV3VisionTransformer(
            patch_size=cfg.patch_size, embed_dim=cfg.embed_dim, depth=cfg.depth,
            num_heads=cfg.num_heads, layer_scale_init=cfg.layer_scale_init)
    return DinoVisionTransformer(
        img_size=cfg.image_size, patch_size=cfg.patch_size, embed_dim=cfg.embed_dim,
        depth=cfg.depth, num_heads=cfg.num_heads, layer_scale_init=cfg.layer_scale_init)


def _lr(cfg: PretrainConfig, step: int) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * t))


def _momentum(cfg: PretrainConfig, step: int) -> float:
    return 1.0 - (1.0 - cfg.ema_start) * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))


def _save_atomic(obj: object, path: str) -> None:
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def pretrain(cfg: PretrainConfig, resume: bool = False, bank: SceneBank | None = None,
             progress: bool = True, stop_at: int | None = None) -> list[dict[str, float]]:
    """Run (or resume) pretraining; writes `cfg.output` and returns the per-step losses.

    `stop_at` ends the run after that many steps with its state saved (the schedule is still
    that of `cfg.steps`), so a long run can be done in slices with `resume=True`; the model file
    is written only when `cfg.steps` is reached.
    """
    last = cfg.steps if stop_at is None else min(cfg.steps, int(stop_at))
    os.makedirs(cfg.work_dir, exist_ok=True)
    state_path = os.path.join(cfg.work_dir, STATE_FILE)
    torch.manual_seed(cfg.seed)
    student = build_student(cfg)
    grid = (cfg.image_size // cfg.patch_size,) * 2
    head = CrossConditionMIM(student, cfg.decoder_dim, grid=grid)
    teacher = copy.deepcopy(student).requires_grad_(False)
    params = [p for m in (student, head) for p in m.parameters()]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95))
    history: list[dict[str, float]] = []
    start_step = 0
    if resume and os.path.exists(state_path):
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        if state["config"] != dataclasses.asdict(cfg):
            changed = sorted(k for k, v in dataclasses.asdict(cfg).items()
                             if state["config"].get(k) != v)
            raise ValueError(f"{state_path}: cannot resume, the configuration differs in {changed}")
        student.load_state_dict(state["student"])
        teacher.load_state_dict(state["teacher"])
        head.load_state_dict(state["head"])
        optimizer.load_state_dict(state["optimizer"])
        start_step, history = state["step"], state["history"]
        if progress:
            print(f"[pretrain] resumed from {state_path} at step {start_step}", flush=True)
    if bank is None:
        bank = render_scene_bank(cfg.num_scenes, cfg.image_size, cfg.seed, progress)
    student.train()
    head.train()
    started = time.time()
    for step in range(start_step, last):
        rng = np.random.default_rng([cfg.seed, 31337, step])
        side = int(rng.choice(cfg.crop_sides))
        tokens = (side // cfg.patch_size) ** 2
        batch = max(2, cfg.tokens_per_step // tokens)
        view, other, offsets = sample_views(bank, rng, batch, side, cfg.patch_size)
        noise = torch.from_numpy(rng.random((batch, tokens)))
        for group in optimizer.param_groups:
            group["lr"] = _lr(cfg, step)
        losses = head(student, teacher, view, other, offsets, noise, cfg.mask_ratio)
        total = losses["mim"] + losses["cross"] + cfg.consistency_weight * losses["consistency"]
        if not torch.isfinite(total):
            raise FloatingPointError(f"pretraining loss is {total.item()} at step {step}: "
                                     f"{ {k: v.item() for k, v in losses.items()} }")
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(params, 3.0)
        optimizer.step()
        with torch.no_grad():
            m = _momentum(cfg, step)
            for t, s in zip(teacher.parameters(), student.parameters()):
                t.mul_(m).add_(s.detach(), alpha=1.0 - m)
        record = {"step": step, "total": total.item(), **{k: v.item() for k, v in losses.items()}}
        history.append(record)
        done = step + 1
        if progress and (done % cfg.log_every == 0 or done == cfg.steps):
            rate = (time.time() - started) / (done - start_step)
            recent = history[-cfg.log_every:]
            avg = {k: sum(r[k] for r in recent) / len(recent)
                   for k in ("total", "mim", "cross", "consistency")}
            print(f"[pretrain] step {done}/{cfg.steps} loss {avg['total']:.4f} (mim "
                  f"{avg['mim']:.4f} cross {avg['cross']:.4f} consistency "
                  f"{avg['consistency']:.4f}) lr {_lr(cfg, step):.2e} {rate:.2f} s/step "
                  f"ETA {rate * (cfg.steps - done) / 60:.1f} min", flush=True)
        if done % cfg.checkpoint_every == 0 or done == last:
            _save_atomic({"config": dataclasses.asdict(cfg), "step": done,
                          "student": student.state_dict(), "teacher": teacher.state_dict(),
                          "head": head.state_dict(), "optimizer": optimizer.state_dict(),
                          "history": history}, state_path)
    if last < cfg.steps:
        return history
    out_dir = os.path.dirname(os.path.abspath(cfg.output))
    os.makedirs(out_dir, exist_ok=True)
    if cfg.family == "dinov3":
        official = to_official_dinov3_state_dict(teacher.state_dict(), cfg.num_heads)
    else:
        official = to_official_state_dict(teacher.state_dict())
    _save_atomic(official, cfg.output)
    with open(os.path.join(cfg.work_dir, "history.json"), "w") as f:
        json.dump(history, f)
    return history
