#!/usr/bin/env python
"""Measure what SoMA costs and saves against its baselines; prints one table per benchmark.

Usage: python tools/benchmark.py {svd,cold_build,train,infer,data,mask2former,codino,checkpoint,all}
                                 [--size T|S|B|L] [--device cpu|cuda]
                                 [--repeats N] [--threads N] [--memory-only | --time-only]
                                 [--json OUT] [--markdown OUT]
Every figure is a ratio to a baseline measured in the same process, repetitions interleaved;
see benchmarks/harness/ for what each benchmark runs and benchmarks/RESULTS.md for a reference run.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BENCHMARKS = ("svd", "cold_build", "train", "infer", "data", "mask2former", "codino", "checkpoint")
SIZES = ("T", "S", "B", "L")
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("benchmark", choices=[*BENCHMARKS, "all"])
    parser.add_argument("--size", choices=SIZES, default="B",
                        help="T: smoke test; S: quick; B: reference CPU run; L: ViT-L (GPU)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--repeats", type=int, default=None,
                        help="repetitions per method (default: svd 3, cold_build 3, train 8, "
                             "infer 16, data 4, mask2former 4, codino 4, checkpoint 2)")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads of torch and of every BLAS/OpenMP pool, scipy's included "
                             "(default: each library's own choice)")
    parser.add_argument("--memory-only", action="store_true",
                        help="checkpoint benchmark: peak memory only, no timed steps (size L on "
                             "a CPU)")
    parser.add_argument("--time-only", action="store_true",
                        help="checkpoint benchmark: step times only, no memory children")
    parser.add_argument("--json", default=None, help="write the full report as JSON here")
    parser.add_argument("--markdown", default=None,
                        help="write command, machine and tables as markdown here")
    return parser.parse_args(argv)


def names_for(choice: str) -> list[str]:
    return list(BENCHMARKS) if choice == "all" else [choice]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            raise SystemExit(f"--threads must be >= 1, got {args.threads}")
        # read by the BLAS libraries when they load (scipy's OpenBLAS ignores torch's setting)
        for name in THREAD_VARIABLES:
            os.environ[name] = str(args.threads)
    import torch

    from benchmarks.harness import format_markdown, run_benchmarks
    from benchmarks.harness.runner import TABLES, check_arguments

    names = names_for(args.benchmark)
    try:
        check_arguments(names, args.size, args.device, args.repeats)
    except (ValueError, RuntimeError) as exc:
        print(f"benchmark.py: error: {exc}", file=sys.stderr)
        return 2

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    command = "python tools/benchmark.py " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    start = time.perf_counter()

    def progress(message: str) -> None:
        print(f"[benchmark {time.perf_counter() - start:7.1f} s] {message}", file=sys.stderr,
              flush=True)

    def show(result: dict) -> None:
        print(TABLES[result["benchmark"]](result) + "\n", flush=True)

    report = run_benchmarks(names, size=args.size, device=args.device, repeats=args.repeats,
                            command=command, progress=progress, on_result=show,
                            memory_only=args.memory_only, time_only=args.time_only)
    machine = report["meta"]["machine"]
    print(f"nproc {machine['nproc']}, torch {machine['torch']} ({machine['torch_threads']} "
          f"threads), load average {machine['loadavg']} -> {report['meta']['loadavg_end']}, "
          f"wall {report['meta']['wall_s']:.0f} s")
    for path, text in ((args.json, lambda: json.dumps(report, indent=2)),
                       (args.markdown, lambda: format_markdown(report))):
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            with open(path, "w", encoding="utf-8") as fh:
                fh.write(text() + "\n")
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
