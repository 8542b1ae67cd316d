#!/usr/bin/env python
"""Train or evaluate a soma-d2 model: the usual Detectron2 entry point, with the SoMA recipe.

    python tools/train_net.py --config-file configs/dwd_soma.yaml
    python tools/train_net.py --config-file configs/dwd_soma.yaml --num-gpus 4
    python tools/train_net.py --config-file configs/dwd_soma.yaml --eval-only MODEL.WEIGHTS out/model_final.pth
    python tools/train_net.py --config-file configs/dwd_soma.yaml --resume
    python tools/train_net.py --config-file CFG --register-module my_datasets.py \
        DATASETS.REGISTER '["voc:mine_train:/data/mine:train:cat,dog"]' DATASETS.TRAIN '("mine_train",)'

Works on CPU with `MODEL.DEVICE cpu` (several processes use the gloo backend).
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from soma_d2 import silence_known_noise  # noqa: E402

silence_known_noise()  # before Detectron2 is imported

from detectron2.engine import default_argument_parser, launch  # noqa: E402

from soma_d2.engine.setup import (  # noqa: E402
    check_arguments,
    evaluate_only,
    setup_cfg,
    shutdown_distributed,
    train,
)
from soma_d2.utils.startup import freeze_startup_objects  # noqa: E402


def main(args: argparse.Namespace):
    cfg = setup_cfg(args)
    freeze_startup_objects()
    finished = False
    try:
        result = evaluate_only(cfg) if args.eval_only else train(cfg, resume=args.resume)
        finished = True
        return result
    finally:
        shutdown_distributed(synchronize=finished)


def argument_parser() -> argparse.ArgumentParser:
    """Detectron2's parser plus `--register-module` (user registration code, run in every process)."""
    parser = default_argument_parser()
    parser.add_argument(
        "--register-module", action="append", default=[], metavar="FILE.py",
        help="a Python file that registers data sets (or other components); imported in every "
        "launched process before the config is used (repeatable)",
    )
    return parser


def cli(argv: list[str] | None = None) -> None:
    args = argument_parser().parse_args(argv)
    if args.num_gpus * args.num_machines > 1:
        check_arguments(args)  # a bad entry fails here once, not in every spawned process
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )


if __name__ == "__main__":
    cli()
