#!/usr/bin/env python
"""Write ACDC test-set predictions (Cityscapes label ids) for the ACDC evaluation server.

    python projects/Mask2Former/tools/export_acdc_submission.py \
        --config-file configs/c2acdc_1024_soma_semseg.yaml --acdc-root datasets/acdc \
        --weights output/c2acdc_1024_soma_semseg/model_final.pth --output output/acdc_test_predictions

Loads the checkpoint as every export tool does (soma_d2.engine.export.load_trained_model): the
EMA weights when the checkpoint holds a started EMA (what evaluation scored), unless --no-ema.
"""
from __future__ import annotations

import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "projects", "Mask2Former"))

from soma_d2 import silence_known_noise  # noqa: E402

silence_known_noise()  # before Detectron2 is imported

from soma_d2.config import build_cfg  # noqa: E402
from soma_d2.engine.export import export_argument_parser, load_trained_model  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = export_argument_parser(__doc__.splitlines()[0], "full soma-d2 checkpoint")
    parser.add_argument("--acdc-root", required=True, help="the ACDC folder (rgb_anon/...)")
    args = parser.parse_args(argv)
    from soma_mask2former.export import export_acdc_test

    cfg = build_cfg(args.config_file, args.opts)
    loaded = load_trained_model(cfg, args.weights, use_ema=not args.no_ema)
    n = export_acdc_test(cfg, loaded.model, args.acdc_root, args.output)
    print(f"used the {loaded.reason}")
    print(f"[export_acdc_submission] wrote {n} predictions under {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
