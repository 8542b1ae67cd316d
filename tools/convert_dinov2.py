#!/usr/bin/env python
"""Convert DINOv2 weights (official, timm or HF layout) to soma-d2's ViT layout once.

Splitting qkv, resampling the patch kernel (e.g. 14 -> 16) and the position embedding (to the
training grid) then happen once instead of at every start. The output is
``{"state_dict": ..., "meta": {...}}`` written with torch.save; ``meta`` records the position
grid, so non-square grids load back exactly. Example::

    python tools/convert_dinov2.py dinov2_vitl14_pretrain.pth dinov2_vitl16_512.pth \\
        --patch-size 16 --image-size 512 512
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from soma_d2.checkpoint import convert_dinov2_state_dict, read_weight_file  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", help="DINOv2 weights: .pth/.pt/.bin or .safetensors")
    parser.add_argument("dst", help="output .pth in soma-d2's layout")
    parser.add_argument("--patch-size", type=int, default=None, help="resample the patch kernel")
    parser.add_argument(
        "--image-size", type=int, nargs=2, metavar=("H", "W"), default=None,
        help="resample the position embedding to the grid of this training size",
    )
    parser.add_argument(
        "--patch-resample", choices=("bicubic", "flexi"), default="bicubic",
        help="patch-kernel resampling: plain bicubic (official recipe) or FlexiViT pseudo-inverse",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    state_dict, meta = read_weight_file(args.src)
    conversion = convert_dinov2_state_dict(
        state_dict,
        patch_size=args.patch_size,
        image_size=tuple(args.image_size) if args.image_size else None,
        source=args.src,
        meta=meta,
        patch_resample=args.patch_resample,
    )
    grid = conversion.pos_grid[1]
    out_meta = {
        "format": "soma_d2.dinov2",
        "source": os.path.basename(args.src),
        "source_layout": conversion.layout,
        "patch_size": conversion.patch_size[1],
        "pos_grid": [int(grid[0]), int(grid[1])],
    }
    Path(args.dst).parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": conversion.state_dict, "meta": out_meta}, args.dst)
    size_mb = os.path.getsize(args.dst) / 2**20
    print(f"{conversion.summary()} -> {args.dst} ({size_mb:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
