#!/usr/bin/env python
"""Check the GPU paths that CPU CI cannot: AMP training steps, the CUDA decomposition, L benchmarks.

    python tools/gpu_check.py                      # everything (about 5-10 min on one large GPU)
    python tools/gpu_check.py --skip-benchmarks    # AMP steps and decomposition only (~2 min)
    python tools/gpu_check.py --extra-config projects/CoDINO/configs/dwd_codino_soma.yaml

1. AMP training steps, bfloat16 and float16, through the real trainer (SoMATrainer: Detectron2's
   AMPTrainer, GradScaler for float16) on the tiny test configs and the ViT-L detection and
   segmentation configs, fed by the synthetic weather data (written to --work-dir). Each reports
   the losses (finite?), seconds per step and peak GPU memory.
2. The decomposition on CUDA (batched torch eigensolver) against the CPU path (scipy subset
   eigensolver) on the ViT-L target set (96 matrices, rank 16): max relative difference of the
   minor parts s B A, each path's error against a float64 SVD, and both times.
3. `tools/benchmark.py all --size L --device cuda` (JSON and markdown written to --work-dir).

Prints one compact report and exits 0 when every check passed, 1 otherwise; on a machine without
CUDA it exits 2 at once with a message saying so.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import traceback
import types
from collections.abc import Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

NO_CUDA_EXIT = 2
DET_L = ("configs/dwd_soma_frcnn.yaml", "configs/dwd_soma.yaml")
SEG_L = ("configs/gta2cbm_soma_semfpn.yaml", "configs/gta2cbm_soma_semseg.yaml")
TINY_DET, TINY_SEG = "configs/test/tiny_soma_det.yaml", "configs/test/tiny_soma_semseg.yaml"
AGREEMENT_TOLERANCE = 1e-5  # max relative difference of the minor parts, CUDA vs CPU


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", default=None,
                        help="data, training outputs and benchmark files (default: a temp dir)")
    parser.add_argument("--skip-benchmarks", action="store_true", help="skip part 3")
    parser.add_argument("--skip-large", action="store_true",
                        help="train only the tiny configs (no ViT-L step)")
    parser.add_argument("--extra-config", action="append", default=[],
                        help="a further config to take AMP steps with (repeatable)")
    parser.add_argument("--steps", type=int, default=3, help="training steps per AMP check")
    parser.add_argument("--benchmark-timeout", type=int, default=420, help="seconds for part 3")
    return parser.parse_args(argv)


def first_existing(candidates: tuple[str, ...]) -> str | None:
    """The first of `candidates` (paths relative to the repository) that exists."""
    for rel in candidates:
        if os.path.isfile(os.path.join(ROOT, rel)):
            return rel
    return None


def training_configs(args: argparse.Namespace) -> list[str]:
    configs = [TINY_DET, TINY_SEG]
    if not args.skip_large:
        configs += [c for c in (first_existing(DET_L), first_existing(SEG_L)) if c]
    return configs + list(args.extra_config)


# ---- 1. AMP training steps ---------------------------------------------------------------------


def data_overrides(config: str, work_dir: str) -> list[str]:
    """Point a config at the synthetic data (written once) and train on its source domain only."""
    from soma_d2.config import build_cfg
    from soma_d2.data.synthetic import generate_synthetic_dwd, generate_synthetic_semseg
    from soma_d2.modeling.segmentation import is_semantic_segmentor as uses_sem_seg

    seg = uses_sem_seg(build_cfg(os.path.join(ROOT, config)))
    root = os.path.join(work_dir, "synthetic_semseg" if seg else "synthetic_dwd")
    if not os.path.exists(os.path.join(root, ".complete")):
        writer = generate_synthetic_semseg if seg else generate_synthetic_dwd
        writer(root, images_per_domain=8, image_size=320, seed=0, progress=False)
        open(os.path.join(root, ".complete"), "w").close()
    if seg:
        return ["DATASETS.SYNTHETIC_SEG_ROOT", root, "DATASETS.SYNTHETIC_SEG_PREFIX", "gpuchk",
                "DATASETS.TRAIN", "('gpuchk_daytime_clear_train',)", "DATASETS.TEST", "()"]
    return ["DATASETS.DWD_ROOT", root, "DATASETS.DWD_PREFIX", "gpuchk",
            "DATASETS.TRAIN", "('gpuchk_daytime_clear_train',)", "DATASETS.TEST", "()"]


def training_step_check(config: str, dtype: str | None, work_dir: str, steps: int,
                        device: str = "cuda") -> dict:
    """Take `steps` training steps of `config` with AMP in `dtype` ("bfloat16" / "float16"; None:
    AMP off) on `device`; returns losses, seconds per step, peak memory and what ran."""
    import torch

    from soma_d2.engine.setup import setup_cfg
    from soma_d2.engine.trainer import SoMATrainer

    tag = f"{os.path.splitext(os.path.basename(config))[0]}_{dtype or 'fp32'}"
    out = os.path.join(work_dir, "train", tag)
    amp = ["SOLVER.AMP.ENABLED", str(dtype is not None)]
    if dtype is not None:
        amp += ["SOLVER.AMP.DTYPE", dtype]
    opts = [*data_overrides(config, work_dir), *amp, "MODEL.DEVICE", device,
            "SOLVER.MAX_ITER", str(steps), "SOLVER.STEPS", "()", "SOLVER.WARMUP_ITERS", "1",
            "SOLVER.IMS_PER_BATCH", "2", "SOLVER.LOG_PERIOD", "1",
            "SOLVER.CHECKPOINT_PERIOD", "100000", "TEST.EVAL_PERIOD", "0",
            "DATALOADER.NUM_WORKERS", "2" if device == "cuda" else "0", "OUTPUT_DIR", out]
    args = types.SimpleNamespace(config_file=os.path.join(ROOT, config), eval_only=False,
                                 register_module=[], num_gpus=1, resume=False, opts=opts)
    cfg = setup_cfg(args)
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    trainer = SoMATrainer(cfg)
    inner = trainer._trainer
    ran = type(inner).__name__
    if hasattr(inner, "precision"):
        ran += f"({inner.precision}"
        scaler = getattr(inner, "grad_scaler", None)
        ran += f", GradScaler {'on' if scaler is not None and scaler.is_enabled() else 'off'})"
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    losses = []
    with open(os.path.join(out, "metrics.json")) as f:
        for line in f:
            row = json.loads(line)
            if "total_loss" in row:
                losses.append(row["total_loss"])
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
    del trainer, inner
    if device == "cuda":
        torch.cuda.empty_cache()
    ok = len(losses) == steps and all(math.isfinite(v) for v in losses)
    return {"name": f"train {config} {dtype or 'fp32'}", "ok": ok, "trainer": ran,
            "losses": losses, "s_per_step": seconds / steps, "peak_gib": peak}


# ---- 2. decomposition: CUDA path vs CPU path ---------------------------------------------------


def vit_target_shapes(dim: int = 1024, hidden: int = 4096, blocks: int = 16
                      ) -> list[tuple[int, int]]:
    """(out, in) of q, k, v, proj, fc1, fc2 for `blocks` ViT blocks (ViT-L blocks 8-23: 96)."""
    return [(dim, dim)] * 4 * blocks + [(hidden, dim)] * blocks + [(dim, hidden)] * blocks


def decomposition_check(device: str = "cuda", reference_device: str = "cpu", rank: int = 16,
                        shapes: list[tuple[int, int]] | None = None, checked: int = 6,
                        method: str = "auto", reference_method: str = "auto") -> dict:
    """Minor parts s B A from (`device`, `method`) vs (`reference_device`, `reference_method`) on
    pretrained-like weights; each also against a float64 SVD on the first `checked` matrices."""
    from benchmarks.harness.measure import sync
    from benchmarks.harness.svd import realistic_weights, reference_minor_parts
    from soma_d2.soma.svd import decompose_weights

    weights = realistic_weights(shapes or vit_target_shapes(), seed=0)
    paths = {f"{reference_device} ({reference_method})": (reference_device, reference_method),
             f"{device} ({method})": (device, method)}
    if len(paths) != 2:
        raise ValueError("decomposition_check compares two different (device, method) paths")
    parts, times = {}, {}
    for label, (dev, how) in paths.items():
        moved = [w.to(dev) for w in weights]
        sync(dev)
        start = time.perf_counter()
        triplets = decompose_weights(moved, rank, "minor", how)
        sync(dev)
        times[label] = time.perf_counter() - start
        parts[label] = [t.reconstruction().double().cpu() for t in triplets]
    ref_label, label = list(paths)
    agreement = max(float((a - b).norm() / b.norm())
                    for a, b in zip(parts[label], parts[ref_label], strict=True))
    refs = reference_minor_parts(weights[:checked], rank)
    error = {lab: max(float((p - r).norm() / r.norm()) for p, r in zip(parts[lab], refs))
             for lab in parts}
    return {"name": f"decomposition {label} vs {ref_label}",
            "ok": agreement <= AGREEMENT_TOLERANCE, "matrices": len(weights), "rank": rank,
            "agreement": agreement, "error_vs_fp64_svd": error, "seconds": times}


# ---- 3. L benchmarks ---------------------------------------------------------------------------


def benchmark_check(work_dir: str, timeout: int) -> dict:
    """`tools/benchmark.py all --size L --device cuda` in a subprocess; its goal lines."""
    json_path = os.path.join(work_dir, "results_L_cuda.json")
    md_path = os.path.join(work_dir, "results_L_cuda.md")
    cmd = [sys.executable, os.path.join(ROOT, "tools", "benchmark.py"), "all", "--size", "L",
           "--device", "cuda", "--json", json_path, "--markdown", md_path]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"name": "benchmarks L cuda", "ok": False, "error": f"timed out after {timeout} s"}
    goals = [ln.strip() for ln in proc.stdout.splitlines() if ln.strip().startswith("- goal")]
    result = {"name": "benchmarks L cuda", "ok": proc.returncode == 0, "goals": goals,
              "json": json_path, "markdown": md_path}
    if proc.returncode:
        result["error"] = proc.stderr[-1500:]
    return result


# ---- report ------------------------------------------------------------------------------------


def run_check(fn: Callable[..., dict], *args, name: str) -> dict:
    """Run one check; an exception becomes a failed entry with its last traceback lines."""
    try:
        return fn(*args)
    except Exception:  # noqa: BLE001 (one failing check must not hide the others)
        return {"name": name, "ok": False, "error": traceback.format_exc()[-1500:]}


def format_entry(entry: dict) -> str:
    head = f"[{'ok' if entry['ok'] else 'FAIL'}] {entry['name']}"
    if "losses" in entry:
        losses = ", ".join(f"{v:.4g}" for v in entry["losses"])
        head += (f": {entry['trainer']}; losses {losses}; {entry['s_per_step']:.3f} s/step; "
                 f"peak {entry['peak_gib']:.2f} GiB")
    elif "agreement" in entry:
        err = ", ".join(f"{d} {v:.2e}" for d, v in entry["error_vs_fp64_svd"].items())
        secs = ", ".join(f"{d} {v:.2f} s" for d, v in entry["seconds"].items())
        head += (f": {entry['matrices']} matrices, rank {entry['rank']}; max rel difference of "
                 f"the minor parts {entry['agreement']:.2e} (tolerance {AGREEMENT_TOLERANCE:g}); "
                 f"error vs float64 SVD: {err}; time: {secs}")
    elif "goals" in entry:
        head += "".join(f"\n      {g}" for g in entry["goals"])
        head += f"\n      full report: {entry['markdown']}"
    if "error" in entry:
        head += "\n      " + entry["error"].strip().replace("\n", "\n      ")
    return head


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print(f"gpu_check: no CUDA device is visible (torch {torch.__version__}, built for CUDA "
              f"{torch.version.cuda or 'none'}); this script checks the GPU paths only. Run it on "
              "a machine with an NVIDIA GPU.", file=sys.stderr)
        return NO_CUDA_EXIT
    from soma_d2 import silence_known_noise

    silence_known_noise()
    work_dir = args.work_dir or tempfile.mkdtemp(prefix="soma_gpu_check_")
    os.makedirs(work_dir, exist_ok=True)
    print(f"gpu_check on {torch.cuda.get_device_name(0)}, torch {torch.__version__}; "
          f"work dir {work_dir}", flush=True)
    entries = []
    for config in training_configs(args):
        for dtype in ("bfloat16", "float16"):
            entry = run_check(training_step_check, config, dtype, work_dir, args.steps,
                              name=f"train {config} {dtype}")
            entries.append(entry)
            print(format_entry(entry), flush=True)
    entry = run_check(decomposition_check, name="decomposition cuda vs cpu")
    entries.append(entry)
    print(format_entry(entry), flush=True)
    if not args.skip_benchmarks:
        entry = run_check(benchmark_check, work_dir, args.benchmark_timeout,
                          name="benchmarks L cuda")
        entries.append(entry)
    failed = [e for e in entries if not e["ok"]]
    print("\n==== gpu_check report ====")
    for e in entries:
        print(format_entry(e))
    print(f"==== {len(entries) - len(failed)} of {len(entries)} checks passed ====")
    with open(os.path.join(work_dir, "gpu_check.json"), "w") as f:
        json.dump(entries, f, indent=1, default=str)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
