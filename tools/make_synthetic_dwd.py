#!/usr/bin/env python
"""Write the built-in synthetic weather data set in the Diverse Weather (DWD) layout.

Usage: python tools/make_synthetic_dwd.py --out datasets/synthetic_dwd --images-per-domain 200
Then point the DWD registration at it: `register_dwd("datasets/synthetic_dwd")`, or set
DETECTRON2_DATASETS so that `$DETECTRON2_DATASETS/diverseWeather` is the output folder.
With --semseg it writes the segmentation variant instead (the same scenes with per-pixel labels in
Cityscapes train ids), used by configs/demo/synthetic_soma_semseg.yaml via DATASETS.SYNTHETIC_SEG_ROOT.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from soma_d2.data.dwd import DWD_CLASSES  # noqa: E402
from soma_d2.data.synthetic import generate_synthetic_dwd, generate_synthetic_semseg  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output folder (the DWD root)")
    parser.add_argument("--images-per-domain", type=int, default=200)
    parser.add_argument("--image-size", type=int, default=320, help="side of the square images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--semseg", action="store_true", help="write the segmentation variant")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    if args.semseg:
        generate_synthetic_semseg(
            args.out, args.images_per_domain, args.image_size, args.seed, progress=True
        )
        print(f"[synthetic seg] wrote {args.out} in {time.perf_counter() - start:.1f} s")
        return 0
    summary = generate_synthetic_dwd(
        args.out, args.images_per_domain, args.image_size, args.seed, progress=True
    )
    totals = {c: sum(s[c] for s in summary.values()) for c in DWD_CLASSES}
    print(f"[synthetic DWD] wrote {len(summary)} domains to {args.out} in "
          f"{time.perf_counter() - start:.1f} s; objects per class: {totals}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
