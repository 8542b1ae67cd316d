"""CPU time of one inference and one training step, soma-d2 vs the official Co-DINO.

The two implementations live in different environments, so they cannot share a process; this
driver (project venv) interleaves *processes*: round r runs the official half
(``codino_official.py --time N``, side venv) and then ours (``codino_soma_d2.py --time N``) on
that round's bundle, same config, same inputs, for ``--rounds`` rounds. Each process warms up
once and times N repetitions (model building excluded). The ratio is ours / official of the
medians over all repetitions (below 1: ours is faster). Writes ``<out>.json`` and ``<out>.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--official", required=True, help="SoMA repository root")
    p.add_argument("--side-python", required=True, help="the side venv's python")
    p.add_argument("--size", default="tiny")
    p.add_argument("--image", type=int, default=0)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip-sora-svd", action="store_true",
                   help="pass --skip-sora-svd to the official half (faster builds)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    official = {"inference": [], "train_step": []}
    ours = {"inference": [], "train_step": []}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [REPO, os.path.join(REPO, "projects", "CoDINO"), os.environ.get("PYTHONPATH", "")])}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            bundle = os.path.join(tmp, f"round{r}.pt")
            subprocess.run([args.side_python, os.path.join(HERE, "codino_official.py"),
                            "--official", args.official, "--size", args.size, "--image",
                            str(args.image), "--batch", str(args.batch), "--out", bundle,
                            "--time", str(args.repeats),
                            *(["--skip-sora-svd"] if args.skip_sora_svd else [])],
                           check=True, capture_output=True)
            timing = torch.load(bundle, weights_only=True)["meta"]["timing"]
            for k in official:
                official[k] += timing[k]
            stem = os.path.join(tmp, f"ours{r}")
            subprocess.run([sys.executable, os.path.join(HERE, "codino_soma_d2.py"), "--bundle",
                            bundle, "--time", str(args.repeats), "--out", stem], check=True,
                           capture_output=True, env=env)
            with open(stem + ".json") as f:
                mine = next(iter(json.load(f)["sizes"].values()))["timing_ours"]
            for k in ours:
                ours[k] += mine[k]
    rows = {}
    for k in official:
        o, m = statistics.median(official[k]), statistics.median(ours[k])
        rows[k] = {"official_median_s": o, "ours_median_s": m, "ratio_ours_over_official": m / o,
                   "official_s": official[k], "ours_s": ours[k]}
    result = {"size": args.size, "image": args.image, "batch": args.batch,
              "rounds": args.rounds, "repeats": args.repeats, "threads": torch.get_num_threads(),
              "timing": rows}
    md = [f"CPU timing, {args.size} size, batch {args.batch}, {args.rounds} interleaved rounds x "
          f"{args.repeats} repetitions per side (after one warm-up each):", "",
          "| | official median (s) | soma-d2 median (s) | ratio soma-d2 / official |",
          "|---|---|---|---|"]
    for k, r in rows.items():
        md.append(f"| {k.replace('_', ' ')} | {r['official_median_s']:.3f} | "
                  f"{r['ours_median_s']:.3f} | {r['ratio_ours_over_official']:.2f} |")
    with open(args.out + ".json", "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")
    with open(args.out + ".md", "w") as f:
        f.write("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
