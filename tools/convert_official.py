#!/usr/bin/env python
"""Convert an official SoMA release checkpoint (ysj9909/SoMA) into a soma-d2 checkpoint.

The release files hold adapters and heads only; ``--base`` merges them with the official
converted DINOv2 file first, as the official ``tools/merge_soma_weights.py`` does (an already
merged file needs no ``--base``). The output ``{"model": ...}`` loads into the MODE released
configs, which keep the full pretrained W as the frozen base plus the trained adapters::

    python tools/convert_official.py --checkpoint soma_dinov2-L_dgod_best.pth \\
        --base dinov2_sora_converted_1024x1024.pth --output dgod_converted.pth
    python tools/train_net.py --config-file configs/dwd_released.yaml --eval-only \\
        MODEL.WEIGHTS dgod_converted.pth

Every official key is converted or the conversion fails naming the keys it does not know;
with ``--config-file`` the result is also checked key by key and shape by shape against the
model that config builds (no missing or unexpected keys).
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "projects" / "CoDINO", ROOT / "projects" / "Mask2Former"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from soma_d2.checkpoint.official_soma import (  # noqa: E402
    check_consumed,
    check_converted_against,
    convert_official_backbone,
    load_official_checkpoint,
)
from soma_d2.utils import atomic_torch_save  # noqa: E402

TASKS = {
    # task: (backbone prefix in our model, marker key prefix in the official state dict)
    "detection": ("backbone.net.", "query_head."),
    "segmentation": ("backbone.net.", "decode_head."),
}
_BLOCK_PARTS = [f"{m}.{p}" for m in ("norm1", "norm2", "attn.q", "attn.k", "attn.v", "attn.proj",
                                     "mlp.fc1", "mlp.fc2") for p in ("weight", "bias")]
_BLOCK_PARTS += ["ls1.gamma", "ls2.gamma"]
_VIT_GLOBALS = ["cls_token", "pos_embed", "mask_token", "patch_embed.proj.weight",
                "patch_embed.proj.bias", "norm.weight", "norm.bias"]


def detect_task(state: Mapping[str, torch.Tensor], source: str) -> str:
    """``detection`` for a Co-DINO state dict (``query_head.*``), ``segmentation`` for a
    Mask2Former one (``decode_head.*``)."""
    found = [t for t, (_, marker) in TASKS.items() if any(k.startswith(marker) for k in state)]
    if len(found) != 1:
        raise ValueError(f"{source}: cannot tell the task from the keys (query_head.* for "
                         f"detection, decode_head.* for segmentation; found {found or 'neither'}"
                         "); pass --task")
    return found[0]


def check_backbone_complete(converted: Mapping[str, torch.Tensor], prefix: str,
                            source: str) -> None:
    """Missing ViT weights are an error: every block 0..depth-1 needs all its parts, each
    adapted layer both factors, and the globals (cls/pos/patch/norm/mask token) must exist."""
    blocks = sorted({int(k[len(prefix) + 7:].split(".")[0]) for k in converted
                     if k.startswith(prefix + "blocks.")})
    expected = [prefix + g for g in _VIT_GLOBALS]
    depth = (blocks[-1] + 1) if blocks else 0
    expected += [f"{prefix}blocks.{i}.{p}" for i in range(depth) for p in _BLOCK_PARTS]
    for key in list(converted):
        if key.endswith(".A"):
            expected.append(key[:-2] + ".B")
        elif key.endswith(".B"):
            expected.append(key[:-2] + ".A")
    missing = [k for k in expected if k not in converted]
    if missing or not blocks:
        raise ValueError(
            f"{source}: the converted checkpoint lacks {len(missing)} backbone keys, e.g. "
            f"{missing[:8]}; a release file holds adapters and heads only: pass the official "
            "DINOv2 base file (dinov2_sora_converted*.pth) with --base")
    if not any(k.endswith(".A") for k in converted):
        raise ValueError(f"{source}: no SoMA adapters (lora_A/lora_B) in the backbone; this is "
                         "not a SoMA checkpoint")


def convert_official_state(state: Mapping[str, torch.Tensor], task: str = "auto",
                           source: str = "<official state dict>") -> dict[str, torch.Tensor]:
    """Official (merged) state dict -> soma-d2 state dict for ``task`` (auto, detection,
    segmentation); raises ValueError naming keys that are unknown or missing."""
    if task == "auto":
        task = detect_task(state, source)
    if task not in TASKS:
        raise ValueError(f"--task must be auto, detection or segmentation, got {task!r}")
    prefix, _ = TASKS[task]
    backbone, used = convert_official_backbone(state, prefix)
    if task == "detection":
        from soma_codino.official_convert import convert_official_codino

        heads, used_heads = convert_official_codino(state)
    else:
        from soma_mask2former.official_convert import convert_official_mask2former

        heads, used_heads = convert_official_mask2former(state)
    check_consumed(state, used | used_heads, source=source)
    check_backbone_complete(backbone, prefix, source)
    return {**backbone, **heads}


def expected_model_keys(config_file: str, opts: list[str]) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the model ``config_file`` builds (on CPU, no weights loaded)."""
    import soma_codino  # noqa: F401  (registers the meta-architectures)
    import soma_mask2former  # noqa: F401
    from detectron2.modeling import build_model

    from soma_d2.config import build_cfg

    cfg = build_cfg(config_file, ["MODEL.DEVICE", "cpu", "MODEL.SOMA.PRETRAINED", "",
                                  "DATASETS.TRAIN", "()", "DATASETS.TEST", "()", *opts])
    model = build_model(cfg)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True,
                        help="official release (or merged) checkpoint, e.g. "
                             "soma_dinov2-L_dgod_best.pth")
    parser.add_argument("--base", default=None,
                        help="official converted DINOv2 file (dinov2_sora_converted*.pth) to "
                             "merge under the release, as tools/merge_soma_weights.py does")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--ema", action="store_true",
                       help="require EMA weights: the file's state_dict, which mmengine's "
                            "EMAHook fills with the average (error if it has no ema_state_dict)")
    which.add_argument("--raw", action="store_true",
                       help="the raw (non-averaged) weights an EMAHook run keeps in "
                            "ema_state_dict")
    parser.add_argument("--task", choices=("auto", "detection", "segmentation"), default="auto")
    parser.add_argument("--output", required=True, help="soma-d2 checkpoint to write (.pth)")
    parser.add_argument("--config-file", default=None,
                        help="also check the result against the model this config builds, e.g. "
                             "configs/dwd_released.yaml (slow at ViT-L: builds the model)")
    parser.add_argument("opts", nargs=argparse.REMAINDER,
                        help="config overrides for --config-file (KEY VALUE ...)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    select = "ema" if args.ema else "raw" if args.raw else "state_dict"
    state = load_official_checkpoint(args.checkpoint, args.base, select)
    converted = convert_official_state(state, args.task, source=args.checkpoint)
    if args.config_file:
        check_converted_against(converted, expected_model_keys(args.config_file, args.opts),
                                source=args.checkpoint)
    out_dir = os.path.dirname(os.path.abspath(args.output))
    os.makedirs(out_dir, exist_ok=True)
    atomic_torch_save({"model": converted}, args.output)
    print(f"wrote {args.output}: {len(converted)} tensors from {len(state)} official keys"
          + (f" (checked against {args.config_file})" if args.config_file else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
