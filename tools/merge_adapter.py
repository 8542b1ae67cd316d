#!/usr/bin/env python
"""Merge a trained SoMA model into plain Linear weights: zero inference overhead.

    python tools/merge_adapter.py --config-file configs/dwd_soma.yaml \
        --weights output/dwd_soma/model_final.pth --output output/dwd_soma/model_merged.pth
    python tools/train_net.py --config-file configs/dwd_soma.yaml --eval-only \
        MODEL.SOMA.MODE frozen MODEL.WEIGHTS output/dwd_soma/model_merged.pth

`--weights` may be a full checkpoint or an adapter-only file (then MODEL.SOMA.PRETRAINED must name
the original foundation weights).
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from soma_d2 import silence_known_noise  # noqa: E402

silence_known_noise()  # before Detectron2 is imported

from soma_d2.engine.export import run_export_tool, write_merged  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    args, size = run_export_tool(argv, __doc__.splitlines()[0],
                                 "full checkpoint or adapter-only file", write_merged)
    print(f"wrote merged checkpoint {args.output} ({size / 2**20:.1f} MiB); evaluate it with "
          "MODEL.SOMA.MODE frozen")


if __name__ == "__main__":
    main()
