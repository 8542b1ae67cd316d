#!/usr/bin/env python
"""Pretrain the demo's foundation ViT on unlabelled synthetic scenes of every condition.

Self-supervised (masked reconstruction across conditions plus token consistency, see
soma_d2/pretrain/objective.py), deterministic for a seed, resumable with --resume; writes the
EMA teacher in the official DINOv2 layout (fused qkv), loadable as MODEL.SOMA.PRETRAINED, and
prints its SHA-256. The shipped pretrained/ file was made by the command in pretrained/README.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

from soma_d2.pretrain import PretrainConfig, pretrain  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = PretrainConfig()
    for field in dataclasses.fields(PretrainConfig):
        value = getattr(defaults, field.name)
        flag = "--" + field.name.replace("_", "-")
        if isinstance(value, tuple):
            parser.add_argument(flag, type=int, nargs="+", default=list(value))
        else:
            parser.add_argument(flag, type=type(value), default=value)
    parser.add_argument("--resume", action="store_true",
                        help="continue from WORK_DIR/pretrain_state.pth (same configuration)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    return parser.parse_args(argv)


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(PretrainConfig)}
    values["crop_sides"] = tuple(values["crop_sides"])
    cfg = PretrainConfig(**values)
    pretrain(cfg, resume=args.resume)
    print(f"[pretrain] wrote {cfg.output} (sha256 {sha256(cfg.output)})", flush=True)


if __name__ == "__main__":
    main()
