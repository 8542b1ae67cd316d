#!/usr/bin/env python
"""Write corrupted copies of registered test sets once, so robustness evaluations reuse them.

    python tools/make_corrupted.py --config-file configs/dwd_soma.yaml \\
        --output-dir datasets/corrupted --corruptions benchmark --severities 1,2,3,4,5
    python tools/train_net.py --config-file configs/dwd_soma.yaml --eval-only MODEL.WEIGHTS W \\
        DATASETS.TEST_CORRUPTIONS '("benchmark",)' DATASETS.TEST_CORRUPTION_DIR datasets/corrupted

Copies keep each data set's layout (`<dir>/<dataset>/<corruption>/<severity>/...`, lossless PNG)
and are registered as `<dataset>-<corruption>-<severity>`; evaluating them gives the numbers of
on-the-fly corruption exactly. Data sets default to the config's `DATASETS.TEST`; finished entries
are kept (resume after an interruption) unless --overwrite.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from soma_d2 import silence_known_noise  # noqa: E402

silence_known_noise()  # before Detectron2 is imported

from detectron2.utils.logger import setup_logger  # noqa: E402

from soma_d2.config import build_cfg  # noqa: E402
from soma_d2.data import register_dwd, register_synthetic_semseg  # noqa: E402
from soma_d2.data.catalog_entries import (  # noqa: E402
    import_registration_modules,
    register_dataset_entries,
)
from soma_d2.data.corruptions import write_corrupted_copies  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--output-dir", required=True, help="root of the stored copies")
    parser.add_argument("--datasets", default="", help="comma-separated (default DATASETS.TEST)")
    parser.add_argument("--corruptions", default="benchmark", help="comma-separated names")
    parser.add_argument("--severities", default="1,2,3,4,5", help="comma-separated, 1-5")
    parser.add_argument("--overwrite", action="store_true", help="rewrite stored entries")
    parser.add_argument("--register-module", action="append", default=[], metavar="FILE.py",
                        help="a Python file that registers data sets (as for tools/train_net.py)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[str]:
    args = parse_args(argv)
    setup_logger(name="soma_d2")
    corruptions = [c for c in args.corruptions.split(",") if c]
    try:
        severities = [int(s) for s in args.severities.split(",") if s]
    except ValueError as e:
        raise SystemExit(f"--severities {args.severities!r}: integers 1-5 expected ({e})") from e
    cfg = build_cfg(args.config_file, args.opts)
    register_dwd(root=cfg.DATASETS.DWD_ROOT or None, prefix=cfg.DATASETS.DWD_PREFIX)
    register_synthetic_semseg(cfg.DATASETS.SYNTHETIC_SEG_ROOT or None,
                              prefix=cfg.DATASETS.SYNTHETIC_SEG_PREFIX)
    import_registration_modules(args.register_module)  # your own data sets, as in train_net
    register_dataset_entries(list(cfg.DATASETS.REGISTER))
    datasets = [d for d in args.datasets.split(",") if d] or list(cfg.DATASETS.TEST)
    start = time.perf_counter()
    names = []
    for dataset in datasets:
        names += write_corrupted_copies(dataset, corruptions, severities, args.output_dir,
                                        overwrite=args.overwrite)
    print(f"[make_corrupted] {len(names)} corrupted data sets in {args.output_dir} "
          f"({time.perf_counter() - start:.1f} s); evaluate them with DATASETS.TEST_CORRUPTION_DIR "
          f"{args.output_dir}")
    return names


if __name__ == "__main__":
    main()
