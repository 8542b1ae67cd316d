#!/usr/bin/env python
"""Singular spectra of a DINOv2's target layers and where fine-tuning moved them (paper-style).

    python tools/analyze_spectrum.py --pretrained weights/dinov2_vitl14_pretrain.pth \
        --rank 16 --output-dir output/spectrum_vitl
    python tools/analyze_spectrum.py --config-file configs/dwd_soma.yaml \
        --weights output/dwd_soma/model_final.pth --output-dir output/spectrum_dwd_soma

Writes ``spectrum.json`` (every number: singular values, energy shares of the principal / middle /
minor r components per block and layer and, with a fine-tuned checkpoint, the share of each
update in those subspaces of the ORIGINAL weight, input and output side) and PNG plots. With
``--weights`` the pretrained file is the config's MODEL.SOMA.PRETRAINED (unless --pretrained is
given) and the rank defaults to MODEL.SOMA.RANK.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from soma_d2.checkpoint import load_dinov2_weights  # noqa: E402
from soma_d2.soma.spectrum import GROUPS, analyze_weights  # noqa: E402
from soma_d2.utils import atomic_write_text  # noqa: E402

_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)\.weight$")


def target_weights(state: dict[str, torch.Tensor], targets: list[str],
                   blocks: list[int] | None) -> dict[str, torch.Tensor]:
    """``blocks.<i>.<module>`` -> 2-D weight for every module whose name ends with a target."""
    out = {}
    order = {}
    for key, tensor in state.items():
        m = _BLOCK.match(key)
        if m is None or tensor.dim() != 2:
            continue
        module = m.group(2)
        if blocks is not None and int(m.group(1)) not in blocks:
            continue
        hits = [i for i, t in enumerate(targets) if module == t or module.endswith("." + t)]
        if hits:
            out[key[: -len(".weight")]] = tensor
            order[key[: -len(".weight")]] = (int(m.group(1)), hits[0])
    if not out:
        raise ValueError(f"no 2-D block weight matches targets {targets} (blocks {blocks})")
    return dict(sorted(out.items(), key=lambda kv: order[kv[0]]))


def tuned_weights(config_file: str, weights: str, opts: list[str]) -> tuple[dict, str, int]:
    """Merged linear weights of a trained soma-d2 checkpoint, its pretrained file and rank."""
    from soma_d2 import silence_known_noise

    silence_known_noise()
    from soma_d2.engine.export import load_trained_model
    from soma_d2.engine.setup import build_cfg
    from soma_d2.soma import SoMALinear

    cfg = build_cfg(config_file, opts)
    loaded = load_trained_model(cfg, weights)
    print(loaded.reason, file=sys.stderr)
    model = loaded.model
    vit = model.backbone.net
    merged = {}
    with torch.no_grad():
        for name, module in vit.named_modules():
            if isinstance(module, SoMALinear):
                merged[f"{name}.weight"] = module.merged_weight().cpu()
            elif isinstance(module, torch.nn.Linear):
                merged[f"{name}.weight"] = module.weight.detach().cpu()
    return merged, cfg.MODEL.SOMA.PRETRAINED, int(cfg.MODEL.SOMA.RANK)


def _layout(names: list[str]) -> tuple[list[int], list[str]]:
    blocks = sorted({int(n.split(".")[1]) for n in names})
    kinds = list(dict.fromkeys(".".join(n.split(".")[2:]) for n in names))
    return blocks, kinds


def plot(result: dict, output_dir: str) -> list[str]:
    """Spectra per layer kind, minor-energy heatmap and (tuned) update-share bars as PNGs."""
    layers = result["layers"]
    rank = result["rank"]
    blocks, kinds = _layout(list(layers))
    paths = []
    cmap = plt.get_cmap("viridis")
    fig, axes = plt.subplots(1, len(kinds), figsize=(3.2 * len(kinds), 3.2), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        for b in blocks:
            entry = layers.get(f"blocks.{b}.{kind}")
            if entry is None:
                continue
            s = np.asarray(entry["singular_values"])
            ax.semilogy(np.arange(len(s)), s, color=cmap(b / max(blocks[-1], 1)), lw=0.8)
        ax.axvline(len(s) - rank, color="red", lw=0.8, ls="--")
        ax.set_title(kind, fontsize=9)
        ax.set_xlabel("index", fontsize=8)
    axes[0][0].set_ylabel("singular value (colour: block)", fontsize=8)
    fig.suptitle(f"singular spectra; red: first of the minor r={rank}", fontsize=9)
    fig.tight_layout()
    paths.append(os.path.join(output_dir, "spectra.png"))
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    grid = np.full((len(blocks), len(kinds)), np.nan)
    for i, b in enumerate(blocks):
        for j, kind in enumerate(kinds):
            entry = layers.get(f"blocks.{b}.{kind}")
            if entry is not None:
                grid[i, j] = 100 * entry["minor_energy_share"]
    fig, ax = plt.subplots(figsize=(1.2 * len(kinds) + 2, 0.3 * len(blocks) + 1.5))
    im = ax.imshow(grid, aspect="auto", cmap="magma")
    ax.set_xticks(range(len(kinds)), kinds, fontsize=8)
    ax.set_yticks(range(len(blocks)), [str(b) for b in blocks], fontsize=7)
    ax.set_ylabel("block")
    ax.set_title(f"energy share of the minor r={rank} components (%)", fontsize=9)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    paths.append(os.path.join(output_dir, "minor_energy.png"))
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    tuned = [n for n, e in layers.items() if e.get("update", {}).get("input_side")]
    if tuned:
        groups = list(GROUPS) + ["null"]
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
        for ax, side in zip(axes, ("input_side", "output_side")):
            tb = sorted({int(n.split(".")[1]) for n in tuned})
            bottom = np.zeros(len(tb))
            for g in groups:
                vals = np.array([np.mean([layers[n]["update"][side].get(g, 0.0) for n in tuned
                                          if int(n.split(".")[1]) == b]) for b in tb])
                ax.bar([str(b) for b in tb], vals, bottom=bottom, label=g)
                bottom += vals
            ax.set_title(f"update energy by subspace of the original W ({side.replace('_', ' ')})",
                         fontsize=9)
            ax.set_xlabel("block (mean over target layers)", fontsize=8)
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        paths.append(os.path.join(output_dir, "update_subspaces.png"))
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretrained", default="", help="DINOv2 weights (any public layout)")
    parser.add_argument("--config-file", default="", help="config of a fine-tuned checkpoint")
    parser.add_argument("--weights", default="", help="fine-tuned soma-d2 checkpoint")
    parser.add_argument("--rank", type=int, default=None, help="r (default MODEL.SOMA.RANK / 16)")
    parser.add_argument("--targets", nargs="+", default=["q", "k", "v", "proj", "fc1", "fc2"])
    parser.add_argument("--blocks", type=int, nargs="+", default=None, help="default: all")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides")
    args = parser.parse_args(argv)
    if bool(args.weights) != bool(args.config_file):
        parser.error("--weights and --config-file go together (a fine-tuned checkpoint)")
    tuned, rank, pretrained = None, args.rank, args.pretrained
    if args.weights:
        merged, cfg_pretrained, cfg_rank = tuned_weights(args.config_file, args.weights,
                                                         args.opts)
        pretrained = pretrained or cfg_pretrained
        rank = rank or cfg_rank
    if not pretrained:
        parser.error("give --pretrained (or a config whose MODEL.SOMA.PRETRAINED is set)")
    rank = rank or 16
    weights = target_weights(load_dinov2_weights(pretrained), args.targets, args.blocks)
    if args.weights:
        tuned = {n: merged[f"{n}.weight"] for n in weights if f"{n}.weight" in merged}
    start = time.perf_counter()

    def progress(i: int, n: int, name: str) -> None:
        print(f"[{i + 1}/{n}] {name} ({time.perf_counter() - start:.1f} s)", file=sys.stderr,
              flush=True)

    try:
        result = analyze_weights(weights, rank, tuned, progress)
    except ValueError as e:
        parser.exit(2, f"analyze_spectrum: error: {e}\n")
    result.update(pretrained=os.path.abspath(pretrained),
                  checkpoint=os.path.abspath(args.weights) if args.weights else None)
    os.makedirs(args.output_dir, exist_ok=True)
    json_path = os.path.join(args.output_dir, "spectrum.json")
    atomic_write_text(json.dumps(result, indent=1) + "\n", json_path)
    paths = plot(result, args.output_dir)
    print(f"wrote {json_path} and {', '.join(os.path.basename(p) for p in paths)} "
          f"({len(weights)} layers, {time.perf_counter() - start:.1f} s)")
    return result


if __name__ == "__main__":
    main()
