#!/usr/bin/env python
"""`make demo`: the whole soma-d2 pipeline on the built-in synthetic weather data, on CPU.

Generates the data if absent, trains configs/demo/synthetic_soma.yaml through the same code path as
tools/train_net.py, evaluates on all five domains (DG table printed and written to the output dir),
and saves a PNG of predicted boxes per domain.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from soma_d2 import silence_known_noise  # noqa: E402

silence_known_noise()  # before Detectron2 is imported

from detectron2.engine import default_argument_parser  # noqa: E402

from soma_d2.config import build_cfg  # noqa: E402
from soma_d2.data.synthetic import generate_synthetic_dwd  # noqa: E402
from soma_d2.engine.compare import (  # noqa: E402
    FOUNDATIONS_MD,
    METHODS,
    foundations_markdown,
    run_comparison,
)
from soma_d2.engine.robustness import print_robustness_table, robustness_opts  # noqa: E402
from soma_d2.engine.setup import setup_cfg, train  # noqa: E402
from soma_d2.engine.visualize import save_domain_predictions  # noqa: E402
from soma_d2.modeling.dinov3_backbone import resolve_vit_family  # noqa: E402

DEFAULT_CONFIG = os.path.join(ROOT, "configs", "demo", "synthetic_soma.yaml")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", default=DEFAULT_CONFIG)
    parser.add_argument("--output-dir", default="output/demo_synthetic")
    parser.add_argument("--data-dir", default="datasets/synthetic_dwd")
    parser.add_argument("--images-per-domain", type=int, default=200)
    parser.add_argument("--max-iter", type=int, default=0, help="override SOLVER.MAX_ITER")
    parser.add_argument("--num-vis", type=int, default=4, help="images per domain in the PNGs (0: no PNGs)")
    parser.add_argument("--compare", action="store_true",
                        help=f"train and compare {', '.join(METHODS)} (same data, schedule, seeds)")
    parser.add_argument("--seeds", type=int, default=1, help="seeds per method with --compare")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS,
                        help="methods to compare with --compare")
    parser.add_argument("--also-config", action="append", default=[], metavar="CONFIG",
                        help="with --compare: run the same methods and seeds on this config too "
                             "(another foundation model, e.g. configs/demo/synthetic_soma_dinov3"
                             ".yaml) into OUTPUT_DIR/<config name> and tabulate both")
    parser.add_argument("--corruptions", default="",
                        help="also a robustness table, e.g. fog,gaussian_noise (or benchmark)")
    parser.add_argument("--corruption-severities", default="1,2,3,4,5", help="e.g. 1,3,5")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="extra config overrides")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    start = time.time()
    marker = os.path.join(args.data_dir, ".complete")
    if not os.path.exists(marker):
        print(f"[demo] generating synthetic weather data in {args.data_dir} ...", flush=True)
        generate_synthetic_dwd(args.data_dir, images_per_domain=args.images_per_domain, seed=0)
        with open(marker, "w") as f:
            f.write(f"{args.images_per_domain}\n")
    else:
        print(f"[demo] using existing synthetic data in {args.data_dir}", flush=True)

    opts = ["OUTPUT_DIR", args.output_dir, "DATASETS.DWD_ROOT", args.data_dir, *args.opts]
    if args.max_iter:
        opts += ["SOLVER.MAX_ITER", str(args.max_iter)]
    opts += robustness_opts(args.corruptions, args.corruption_severities)
    if args.compare:
        compare(args, opts, start)
        return
    d2_args = default_argument_parser().parse_args(["--config-file", args.config_file, *opts])
    cfg = setup_cfg(d2_args)
    print(f"[demo] training {args.config_file} for {cfg.SOLVER.MAX_ITER} iterations on CPU "
          "(progress with ETA every 20 iterations)", flush=True)
    train(cfg, resume=False)

    pngs = save_domain_predictions(cfg, os.path.join(cfg.OUTPUT_DIR, "model_final.pth"),
                                   num_images=args.num_vis)
    md = os.path.join(cfg.OUTPUT_DIR, "dg_results.md")
    print("\n[demo] domain-generalization table (VOC07 mAP@0.5, %):")
    with open(md) as f:
        print(f.read())
    print_robustness_table(cfg)
    print("[demo] predictions drawn to:")
    for p in pngs:
        print("   ", p)
    print(f"[demo] done in {time.time() - start:.0f} s; results in {cfg.OUTPUT_DIR}")


def compare(args: argparse.Namespace, opts: list[str], start: float) -> None:
    """`--compare`: every method with the same data, schedule and seeds; one table and a chart."""
    comparison = run_comparison(args.config_file, args.output_dir, opts, args.methods,
                                list(range(args.seeds)))
    print("\n[demo] domain-generalization table, one row per run (VOC07 mAP@0.5, %):")
    with open(os.path.join(args.output_dir, "dg_results.md")) as f:
        print(f.read())
    print(comparison.to_markdown())
    print(f"[demo] chart: {os.path.join(args.output_dir, 'comparison.png')}")
    if args.also_config:
        comparisons = {_foundation_label(args.config_file): comparison}
        for config_file in args.also_config:
            label = _foundation_label(config_file)
            out = os.path.join(args.output_dir, os.path.splitext(os.path.basename(config_file))[0])
            comparisons[label] = run_comparison(config_file, out, opts, args.methods,
                                                list(range(args.seeds)))
        text = foundations_markdown(comparisons)
        with open(os.path.join(args.output_dir, FOUNDATIONS_MD), "w") as f:
            f.write(text)
        print(text)
    print(f"[demo] done in {time.time() - start:.0f} s; results in {args.output_dir}")


def _foundation_label(config_file: str) -> str:
    """The foundation model a config trains on, for the side-by-side table."""
    cfg = build_cfg(config_file)
    family = resolve_vit_family(cfg)
    weights = os.path.basename(cfg.MODEL.SOMA.PRETRAINED) or "random init"
    return f"{family} ({weights})"


if __name__ == "__main__":
    main()
