#!/usr/bin/env python
"""Write ACDC test-set predictions (Cityscapes label ids) for the ACDC evaluation server.

    python projects/Mask2Former/tools/export_acdc_test.py \
        --config-file configs/c2acdc_1024_soma_semseg.yaml --acdc-root datasets/acdc \
        --out output/acdc_test_predictions MODEL.WEIGHTS output/c2acdc_1024_soma_semseg/model_final.pth

Evaluates with the EMA weights when the checkpoint has them (as evaluation does).
"""
from __future__ import annotations

import argparse
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "projects", "Mask2Former"))

from soma_d2 import silence_known_noise  # noqa: E402

silence_known_noise()

from soma_d2.checkpoint.checkpointer import SoMACheckpointer  # noqa: E402
from soma_d2.config import build_cfg  # noqa: E402
from soma_d2.engine.ema import ModelEMA  # noqa: E402
from soma_d2.engine.trainer import SoMATrainer  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--acdc-root", required=True, help="the ACDC folder (rgb_anon/...)")
    parser.add_argument("--out", required=True, help="output folder for the PNGs")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides")
    args = parser.parse_args(argv)
    from soma_mask2former.export import export_acdc_test

    cfg = build_cfg(args.config_file, args.opts)
    model = SoMATrainer.build_model(cfg)
    ema = ModelEMA(model, decay=cfg.MODEL.EMA.DECAY) if cfg.MODEL.EMA.ENABLED else None
    checkpointer = SoMACheckpointer(model, save_dir=args.out, **({"ema": ema} if ema else {}))
    if cfg.MODEL.WEIGHTS:
        checkpointer.load(cfg.MODEL.WEIGHTS, checkpointables=["ema"] if ema else [])
    if ema is not None and ema.started:
        with ema.swap_into(model):
            n = export_acdc_test(cfg, model, args.acdc_root, args.out)
    else:
        n = export_acdc_test(cfg, model, args.acdc_root, args.out)
    print(f"[export_acdc_test] wrote {n} predictions under {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
