"""Step-time ratio of soma-d2's Mask2Former segmenter vs the official one, on CPU, interleaved.

The two implementations live in different environments, so each runs in its own worker process
(`mask2former_official.py --serve` in the side venv, `mask2former_soma_d2.py --serve` in the
project venv), both built from the same bundle's size (the soma-d2 worker also loads the
bundle's official weights; the official worker rebuilds the same seeded weights) on the same
inputs. This driver sends them one command at a time: after `--warmup` rounds, each of
`--repeats` rounds times one training step (forward + losses + backward on the bundle's batch)
and one slide inference (the bundle's slide image, the official window and stride) on each
side, alternating which side goes first, so that load from other processes on the machine hits
both alike. Only one worker computes at a time; each may use `--threads` threads. Reported:
median seconds per side and the median of the per-round ratios soma-d2 / official.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

from benchmarks.official.mask2former_results import update_results
from benchmarks.official.protocol import load_bundle

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


class Worker:
    """A `--serve` process: one command line in, one JSON line out."""

    def __init__(self, argv: list[str], env: dict[str, str]):
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env=env, cwd=ROOT)
        self._read()  # {"ready": true}

    def _read(self) -> dict:
        for line in self.proc.stdout:
            line = line.strip()
            if line.startswith("{"):
                return json.loads(line)
        raise RuntimeError(f"worker {self.proc.args[:3]} exited with {self.proc.wait()}")

    def run(self, cmd: str) -> float:
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        return float(self._read()["seconds"])

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=60)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--soma", required=True, help="checkout of ysj9909/SoMA")
    ap.add_argument("--side-python", required=True, help="python of the side environment")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", help="results path stem to update (results_mask2former)")
    args = ap.parse_args(argv)
    size = load_bundle(args.bundle)["meta"]["size"]
    env = dict(os.environ)
    threads = ["--threads", str(args.threads)]
    official = Worker([args.side_python, os.path.join(HERE, "mask2former_official.py"),
                       "--soma", args.soma, "--size", size, "--serve", *threads], env)
    ours = Worker([sys.executable, "-m", "benchmarks.official.mask2former_soma_d2",
                   "--bundle", args.bundle, "--serve", *threads], env)
    sides = {"official": official, "soma_d2": ours}
    times = {c: {s: [] for s in sides} for c in ("train", "infer")}
    try:
        for r in range(args.warmup + args.repeats):
            order = list(sides) if r % 2 == 0 else list(sides)[::-1]
            for cmd in times:
                for side in order:
                    t = sides[side].run(cmd)
                    if r >= args.warmup:
                        times[cmd][side].append(t)
                    print(f"round {r} {cmd:5s} {side:8s} {t:8.3f} s", flush=True)
    finally:
        for w in sides.values():
            w.close()
    result = {"size": size, "repeats": args.repeats, "warmup": args.warmup,
              "threads": args.threads, "cpu_count": os.cpu_count()}
    for cmd, per in times.items():
        ratios = [a / b for a, b in zip(per["soma_d2"], per["official"])]
        result[cmd] = {"official_s": per["official"], "soma_d2_s": per["soma_d2"],
                       "official_median_s": statistics.median(per["official"]),
                       "soma_d2_median_s": statistics.median(per["soma_d2"]),
                       "ratio_median": statistics.median(ratios)}
        print(f"{cmd}: soma-d2 / official = {result[cmd]['ratio_median']:.3f} "
              f"(medians {result[cmd]['soma_d2_median_s']:.3f} s / "
              f"{result[cmd]['official_median_s']:.3f} s)")
    if args.out:
        update_results(args.out, timing=result)


if __name__ == "__main__":
    main()
