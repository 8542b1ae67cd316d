"""The robustness table: clean score, score per corruption and severity, mPC and rPC.

Michaelis et al. (2019) summarise a detector's robustness by mPC, the mean score over all
corruptions and severities, and rPC = mPC / clean score (in %). `RobustnessTable` holds, per run
and data set, the clean score and the corruption x severity grid of one metric (the data set's DG
metric: VOC AP50, COCO AP, segmentation mIoU, as in `METRIC_KEYS`), derives the per-corruption
and per-severity means, mPC and rPC, and merges into `robustness_results.{json,md}` plus a heatmap
PNG in the output folder, one row per run name (a run evaluated again replaces its row), so
several methods end up side by side as in the DG table.
"""
from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from detectron2.data import MetadataCatalog
from detectron2.utils import comm
from tabulate import tabulate

from ..utils import atomic_write, atomic_write_text
from .dg_table import DEFAULT_METRIC_KEY, METRIC_KEYS

__all__ = ["DatasetRobustness", "RobustnessTable", "metric_key_of", "metric_value"]

logger = logging.getLogger(__name__)

JSON_NAME, MARKDOWN_NAME, HEATMAP_NAME = (
    "robustness_results.json", "robustness_results.md", "robustness_heatmap.png")
FORMAT = "soma_d2.robustness/1"


def metric_key_of(dataset_name: str) -> tuple[str, str]:
    """(task, metric) a data set is scored by: `METRIC_KEYS[evaluator_type]`, else bbox/AP50."""
    kind = MetadataCatalog.get(dataset_name).get("evaluator_type", None)
    return METRIC_KEYS.get(kind, DEFAULT_METRIC_KEY)


def metric_value(results: Mapping, dataset_name: str) -> float:
    """The data set's metric from one evaluation's results, or KeyError naming what was found."""
    task, key = metric_key_of(dataset_name)
    try:
        return float(results[task][key])
    except (KeyError, TypeError) as e:
        raise KeyError(f"results of {dataset_name!r} have no {task}/{key}; found "
                       f"{ {t: list(m) for t, m in results.items()} }") from e


def _json_number(value: float) -> float | None:
    return None if math.isnan(value) else value


def _float(value: float | None) -> float:
    return math.nan if value is None else float(value)


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else math.nan


@dataclass
class DatasetRobustness:
    """One data set's clean score and {corruption: {severity: score}} grid."""

    metric: str
    clean: float
    scores: dict[str, dict[int, float]] = field(default_factory=dict)

    @property
    def corruptions(self) -> list[str]:
        return list(self.scores)

    @property
    def severities(self) -> list[int]:
        return sorted({s for row in self.scores.values() for s in row})

    def corruption_means(self) -> dict[str, float]:
        return {c: _mean(row.values()) for c, row in self.scores.items()}

    def severity_means(self) -> dict[int, float]:
        return {s: _mean(row[s] for row in self.scores.values() if s in row)
                for s in self.severities}

    @property
    def mpc(self) -> float:
        """Mean performance under corruption: the mean of the per-corruption means."""
        return _mean(self.corruption_means().values())

    @property
    def rpc(self) -> float:
        """Relative performance under corruption, mPC / clean in % (NaN for a clean score of 0)."""
        return 100.0 * self.mpc / self.clean if self.clean else math.nan

    def to_dict(self) -> dict:
        """JSON-ready; undefined values (rPC of a clean score of 0, NaN APs) become null."""
        return {
            "metric": self.metric,
            "clean": _json_number(self.clean),
            "mPC": _json_number(self.mpc),
            "rPC": _json_number(self.rpc),
            "corruptions": {c: _json_number(v) for c, v in self.corruption_means().items()},
            "severities": {str(s): _json_number(v) for s, v in self.severity_means().items()},
            "scores": {c: {str(s): _json_number(v) for s, v in row.items()}
                       for c, row in self.scores.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> DatasetRobustness:
        return cls(
            metric=data["metric"],
            clean=_float(data["clean"]),
            scores={c: {int(s): _float(v) for s, v in row.items()}
                    for c, row in data["scores"].items()},
        )


@dataclass
class RobustnessTable:
    """{run: {dataset: DatasetRobustness}} with merging, markdown, JSON and a heatmap."""

    rows: dict[str, dict[str, DatasetRobustness]] = field(default_factory=dict)

    def merge(self, other: RobustnessTable) -> RobustnessTable:
        """Runs of both tables; `other`'s replace same-named ones."""
        return RobustnessTable({**self.rows, **other.rows})

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "rPC_unit": "%",
            "runs": {run: {ds: r.to_dict() for ds, r in sets.items()}
                     for run, sets in self.rows.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> RobustnessTable:
        try:
            if data["format"] != FORMAT:
                raise ValueError(f"format {data['format']!r}, expected {FORMAT!r}")
            return cls({run: {ds: DatasetRobustness.from_dict(r) for ds, r in sets.items()}
                        for run, sets in data["runs"].items()})
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"not a robustness table: missing or malformed key ({e})") from e

    def to_markdown(self, digits: int = 1) -> str:
        """A summary (run x data set: clean, mPC, rPC, per corruption), then each grid."""

        def cell(v: float) -> str:
            return "-" if v is None or math.isnan(v) else f"{v:.{digits}f}"

        corruptions = list(dict.fromkeys(
            c for sets in self.rows.values() for r in sets.values() for c in r.corruptions))
        summary = [
            [run, ds, r.metric, cell(r.clean), cell(r.mpc), cell(r.rpc)]
            + [cell(r.corruption_means().get(c, math.nan)) for c in corruptions]
            for run, sets in self.rows.items() for ds, r in sets.items()
        ]
        parts = [
            "Robustness to common corruptions (mPC: mean over corruptions and severities; "
            "rPC = mPC / clean, %)\n",
            tabulate(summary, headers=["run", "dataset", "metric", "clean", "mPC", "rPC (%)",
                                       *corruptions],
                     tablefmt="pipe", stralign="right", disable_numparse=True),
        ]
        for run, sets in self.rows.items():
            for ds, r in sets.items():
                sev = r.severities
                body = [[c] + [cell(row.get(s, math.nan)) for s in sev] + [cell(mean)]
                        for (c, row), mean in zip(r.scores.items(), r.corruption_means().values())]
                sm = r.severity_means()
                body.append(["mean"] + [cell(sm[s]) for s in sev] + [cell(r.mpc)])
                parts += [
                    f"\n\n{run} on {ds} ({r.metric}; clean {cell(r.clean)}, mPC {cell(r.mpc)}, "
                    f"rPC {cell(r.rpc)} %)\n",
                    tabulate(body, headers=["corruption"] + [f"severity {s}" for s in sev]
                             + ["mean"], tablefmt="pipe", stralign="right", disable_numparse=True),
                ]
        return "".join(parts) + "\n"

    def __str__(self) -> str:
        return self.to_markdown()

    def save_heatmap(self, path: str) -> None:
        """One panel per (run, data set): corruption x severity, colour = score (Agg, no GUI)."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        panels = [(run, ds, r) for run, sets in self.rows.items() for ds, r in sets.items()]
        if not panels:
            return
        ncol = min(3, len(panels))
        nrow = math.ceil(len(panels) / ncol)
        height = max(len(r.corruptions) for *_, r in panels) * 0.35 + 1.5
        fig = Figure(figsize=(4.2 * ncol, height * nrow))
        FigureCanvasAgg(fig)
        for i, (run, ds, r) in enumerate(panels):
            ax = fig.add_subplot(nrow, ncol, i + 1)
            sev = r.severities
            grid = [[row.get(s, math.nan) for s in sev] for row in r.scores.values()]
            im = ax.imshow(grid, aspect="auto", cmap="viridis")
            ax.set_xticks(range(len(sev)), [str(s) for s in sev])
            ax.set_yticks(range(len(r.corruptions)), r.corruptions, fontsize=7)
            ax.set_xlabel("severity")
            ax.set_title(f"{run}\n{ds}: clean {r.clean:.1f}, mPC {r.mpc:.1f}", fontsize=8)
            for y, row in enumerate(grid):
                for x, v in enumerate(row):
                    if not math.isnan(v):
                        ax.text(x, y, f"{v:.1f}", ha="center", va="center", fontsize=6,
                                color="black" if im.norm(v) > 0.6 else "white")
            fig.colorbar(im, ax=ax, label=r.metric)
        fig.tight_layout()
        atomic_write(path, "wb", lambda f: fig.savefig(f, format="png", dpi=100))

    def write(self, output_dir: str) -> RobustnessTable:
        """Merge into `<output_dir>/robustness_results.{json,md}` (+ heatmap PNG); return the
        merged table. An unreadable previous file is moved to `*.bak`. Main process only."""
        if not comm.is_main_process():
            return self
        os.makedirs(output_dir, exist_ok=True)
        json_path = os.path.join(output_dir, JSON_NAME)
        table = self
        if os.path.exists(json_path):
            try:
                with open(json_path) as f:
                    table = RobustnessTable.from_dict(json.load(f)).merge(self)
            except (ValueError, OSError) as e:
                logger.warning("%s cannot be merged (%s); moving it to %s.bak", json_path, e,
                               json_path)
                os.replace(json_path, json_path + ".bak")
        atomic_write_text(json.dumps(table.to_dict(), indent=2) + "\n", json_path)
        atomic_write_text(table.to_markdown(), os.path.join(output_dir, MARKDOWN_NAME))
        table.save_heatmap(os.path.join(output_dir, HEATMAP_NAME))
        return table
