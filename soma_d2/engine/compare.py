"""The method comparison behind `tools/demo.py --compare`: same data, schedule and seeds.

SoMA's claim is relative: keeping the principal components of a pretrained model intact should
generalise better than adapting them (`principal`), than a low-rank update from scratch (`lora`),
than tuning everything (`full_finetune`) or nothing (`frozen`). This module trains each method
for each seed with only `MODEL.SOMA.MODE` and `SEED` changed, merges every run into one DG table
(`TEST.DG.RUN_NAME` = "<method> (seed N)"), summarises mean ± std over seeds per method, and draws
the mean target-domain score per method as a bar chart.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

from detectron2.config import CfgNode
from detectron2.utils.env import seed_all_rng
from detectron2.utils.logger import setup_logger

from ..config import build_cfg
from ..data import register_dwd
from ..evaluation.dg_table import JSON_NAME, DGTable
from .setup import train

__all__ = ["METHODS", "Comparison", "foundations_markdown", "run_comparison", "summarise"]

METHODS: tuple[str, ...] = ("soma", "lora", "principal", "full_finetune", "frozen")
SUMMARY_MD, SUMMARY_JSON, CHART_PNG = "comparison.md", "comparison.json", "comparison.png"
FOUNDATIONS_MD = "comparison_foundations.md"


@dataclass
class Comparison:
    """Every run's row (`table`), and per method the mean and std over seeds of each column."""

    table: DGTable
    methods: list[str]
    seeds: list[int]
    mean: dict[str, dict[str, float]]
    std: dict[str, dict[str, float]]

    @property
    def columns(self) -> list[str]:
        return [*self.table.domains, "mean (targets)"]

    def to_markdown(self) -> str:
        """Method x domain, "mean ± std" over the seeds (std omitted for a single seed)."""
        def cell(method: str, column: str) -> str:
            m = self.mean[method].get(column, math.nan)
            if len(self.seeds) == 1:
                return f"{m:.1f}"
            return f"{m:.1f} ± {self.std[method].get(column, math.nan):.1f}"

        src = self.table.source
        head = ["method"] + [f"{c} (source)" if c == src else c for c in self.columns]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join([m] + [cell(m, c) for c in self.columns]) + " |"
                  for m in self.methods]
        seeds = ", ".join(str(s) for s in self.seeds)
        return (f"Method comparison ({self.table.metric}, source {src}; mean ± std over seeds "
                f"{seeds})\n\n" + "\n".join(lines) + "\n")


def run_name(method: str, seed: int) -> str:
    return f"{method} (seed {seed})"


def summarise(table: DGTable, methods: Sequence[str], seeds: Sequence[int]) -> Comparison:
    """Mean and (sample) std over `seeds` of every column of each method's rows in `table`."""
    mean: dict[str, dict[str, float]] = {}
    std: dict[str, dict[str, float]] = {}
    for method in methods:
        runs = [run_name(method, s) for s in seeds]
        absent = [r for r in runs if r not in table.rows]
        if absent:
            raise KeyError(f"the DG table has no rows {absent}; it holds {list(table.rows)}")
        mean[method], std[method] = {}, {}
        for column in [*table.domains, "mean (targets)"]:
            values = [table.mean_target(r) if column == "mean (targets)"
                      else table.rows[r].get(column) for r in runs]
            values = [v for v in values if v is not None]
            if not values:
                continue
            mu = sum(values) / len(values)
            var = sum((v - mu) ** 2 for v in values) / max(1, len(values) - 1)
            mean[method][column], std[method][column] = mu, math.sqrt(var)
    return Comparison(table, list(methods), list(seeds), mean, std)


def plot_comparison(comparison: Comparison, path: str) -> str:
    """Bar chart: mean target-domain score per method (error bars: std over seeds) and per target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = comparison.table.targets
    groups = ["mean (targets)", *targets]
    fig, ax = plt.subplots(figsize=(1.6 + 1.5 * len(groups), 3.8), dpi=110)
    width = 0.8 / len(comparison.methods)
    for i, method in enumerate(comparison.methods):
        xs = [g + (i - (len(comparison.methods) - 1) / 2) * width for g in range(len(groups))]
        heights = [comparison.mean[method].get(c, 0.0) for c in groups]
        errors = [comparison.std[method].get(c, 0.0) for c in groups]
        ax.bar(xs, heights, width, yerr=errors if len(comparison.seeds) > 1 else None,
               capsize=2, label=method)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([g.replace("_", "\n") for g in groups], fontsize=8)
    ax.set_ylabel(f"{comparison.table.metric} (%)")
    ax.set_title(f"Unseen target domains (source {comparison.table.source}), "
                 f"{len(comparison.seeds)} seed(s)", fontsize=9)
    ax.legend(fontsize=7, ncol=len(comparison.methods), loc="upper right")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _run_cfg(config_file: str, opts: Sequence[str]) -> CfgNode:
    cfg = build_cfg(config_file, list(opts))
    register_dwd(root=cfg.DATASETS.DWD_ROOT or None, prefix=cfg.DATASETS.DWD_PREFIX)
    cfg.freeze()
    return cfg


def run_comparison(
    config_file: str,
    output_dir: str,
    opts: Sequence[str] = (),
    methods: Sequence[str] = METHODS,
    seeds: Sequence[int] = (0,),
    progress: bool = True,
) -> Comparison:
    """Train and evaluate each method for each seed; write the table, summary and chart.

    Runs go to `<output_dir>/<method>_seed<N>`; their DG rows are merged into
    `<output_dir>/dg_results.{json,md}`; the summary goes to `comparison.{md,json}` and the chart
    to `comparison.png`. A run whose folder already has a `model_final.pth` and its DG row is not
    trained again (so an interrupted comparison continues where it stopped).
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError(f"unknown or no methods {unknown or list(methods)}; choose from {METHODS}")
    if not seeds:
        raise ValueError("seeds must name at least one seed")
    os.makedirs(output_dir, exist_ok=True)
    setup_logger(output_dir, name="detectron2")
    setup_logger(output_dir, name="soma_d2")
    table: DGTable | None = None
    for seed in seeds:
        for method in methods:
            name = run_name(method, seed)
            run_dir = os.path.join(output_dir, f"{method}_seed{seed}")
            cfg = _run_cfg(config_file, [*opts, "MODEL.SOMA.MODE", method, "SEED", str(seed),
                                         "OUTPUT_DIR", run_dir, "TEST.DG.RUN_NAME", name])
            row = _finished_row(run_dir, name)
            if row is None:
                if progress:
                    print(f"[compare] training {name} for {cfg.SOLVER.MAX_ITER} iterations",
                          flush=True)
                seed_all_rng(cfg.SEED)
                train(cfg, resume=False)
                row = _finished_row(run_dir, name)
                if row is None:
                    raise RuntimeError(f"{run_dir}: training ended without a DG row for {name!r}")
            elif progress:
                print(f"[compare] {name}: reusing the finished run in {run_dir}", flush=True)
            table = row if table is None else table.merge(row)
            if progress:
                print(f"[compare] {name}: mean over targets "
                      f"{row.mean_target(name) or float('nan'):.1f}", flush=True)
    assert table is not None
    table = DGTable(table.metric, table.source, table.domains, table.rows)
    for path in (os.path.join(output_dir, JSON_NAME), os.path.join(output_dir, "dg_results.md")):
        if os.path.exists(path):
            os.remove(path)
    table.write(output_dir)
    comparison = summarise(table, methods, seeds)
    with open(os.path.join(output_dir, SUMMARY_MD), "w") as f:
        f.write(comparison.to_markdown())
    with open(os.path.join(output_dir, SUMMARY_JSON), "w") as f:
        json.dump({"methods": comparison.methods, "seeds": comparison.seeds,
                   "mean": comparison.mean, "std": comparison.std}, f, indent=2)
    plot_comparison(comparison, os.path.join(output_dir, CHART_PNG))
    return comparison


def foundations_markdown(comparisons: dict[str, Comparison]) -> str:
    """One table of several comparisons (one per foundation model, e.g. the DINOv2- and the
    DINOv3-layout demo ViTs): a row per method and foundation, "mean ± std" over the seeds."""
    first = next(iter(comparisons.values()))
    columns = first.columns
    head = ["method", "foundation"] + [f"{c} (source)" if c == first.table.source else c
                                       for c in columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method in first.methods:
        for label, comparison in comparisons.items():
            if method not in comparison.methods:
                continue
            cells = []
            for column in columns:
                m = comparison.mean[method].get(column, math.nan)
                sd = comparison.std[method].get(column, math.nan)
                cells.append(f"{m:.1f}" if len(comparison.seeds) == 1 else f"{m:.1f} ± {sd:.1f}")
            lines.append("| " + " | ".join([method, label, *cells]) + " |")
    seeds = ", ".join(str(s) for s in first.seeds)
    return (f"Method comparison per foundation model ({first.table.metric}, source "
            f"{first.table.source}; seeds {seeds})\n\n" + "\n".join(lines) + "\n")


def _finished_row(run_dir: str, name: str) -> DGTable | None:
    path = os.path.join(run_dir, JSON_NAME)
    if not os.path.exists(os.path.join(run_dir, "model_final.pth")) or not os.path.exists(path):
        return None
    with open(path) as f:
        table = DGTable.from_dict(json.load(f))
    if name not in table.rows:
        return None
    return DGTable(table.metric, table.source, table.domains, {name: table.rows[name]}, name)
