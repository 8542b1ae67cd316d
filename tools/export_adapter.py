#!/usr/bin/env python
"""Extract the adapter-only file (what training changed + the config) from a full checkpoint.

    python tools/export_adapter.py --config-file configs/dwd_soma.yaml \
        --weights output/dwd_soma/model_0004999.pth --output output/dwd_soma/model_0004999_adapter.pth

Load it later with MODEL.WEIGHTS <adapter file> and MODEL.SOMA.PRETRAINED <original DINOv2 file>.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from soma_d2 import silence_known_noise  # noqa: E402

silence_known_noise()  # before Detectron2 is imported

from soma_d2.engine.export import run_export_tool, write_adapter  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    args, size = run_export_tool(argv, __doc__.splitlines()[0], "full soma-d2 checkpoint",
                                 write_adapter)
    full = os.path.getsize(args.weights)
    print(f"wrote adapter file {args.output}: {size / 2**20:.2f} MiB "
          f"({100 * size / full:.1f}% of the {full / 2**20:.1f} MiB checkpoint)")


if __name__ == "__main__":
    main()
