#!/usr/bin/env python
"""Share a SoMA-tuned DINOv2 or DINOv3 backbone: a PEFT LoRA adapter for transformers, or timm.

    python tools/export_peft.py --config-file configs/dwd_soma.yaml \
        --weights output/dwd_soma/model_final.pth --output output/dwd_soma/peft_adapter \
        --base-model facebook/dinov2-large
    python tools/export_peft.py --format timm --config-file configs/dwd_soma.yaml \
        --weights output/dwd_soma/model_final.pth --output output/dwd_soma/backbone_timm.safetensors

PEFT: load with ``PeftModel.from_pretrained(Dinov2Model.from_pretrained(<original>), <dir>)``
(``DINOv3ViTModel`` for a DINOv3 backbone).
The update ``s (B A - B0 A0)`` is written as an exact rank-2r LoRA over the ORIGINAL weights, so a
backbone whose patch kernel was resampled (the official recipe's 14 -> 16) is refused: only
``--format timm`` (merged weights at the trained patch size; ``timm.create_model`` kwargs are
written next to the file) can carry it. MODEL.SOMA.PRETRAINED must name the original weights.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from soma_d2 import silence_known_noise  # noqa: E402

silence_known_noise()  # before Detectron2 is imported

from soma_d2.engine.setup import build_cfg  # noqa: E402
from soma_d2.engine.share import write_peft, write_timm  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--weights", required=True, help="full checkpoint or adapter-only file")
    parser.add_argument("--output", required=True, help="adapter directory (peft) or file (timm)")
    parser.add_argument("--format", choices=("peft", "timm"), default="peft")
    parser.add_argument("--base-model", default=None,
                        help="base_model_name_or_path recorded in adapter_config.json")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides")
    args = parser.parse_args(argv)
    cfg = build_cfg(args.config_file, args.opts)
    try:
        if args.format == "timm":
            kwargs, reason = write_timm(cfg, args.weights, args.output)
            print(reason)
            name = "vit_*_patch16_dinov3" if "swiglu_mlp" in kwargs else "vit_*_patch14*_dinov2"
            print(f"wrote merged timm weights {args.output}; build the model with "
                  f"timm.create_model('{name}', **{kwargs})")
            return
        export = write_peft(cfg, args.weights, args.output, args.base_model)
    except ValueError as e:
        parser.exit(2, f"export_peft: error: {e}\n")
    for note in export.notes:
        print(note)
    print(f"wrote PEFT LoRA adapter {args.output} ({len(export.tensors)} tensors)")


if __name__ == "__main__":
    main()
