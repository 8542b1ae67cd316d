"""The robustness table: clean score, score per corruption and severity, mPC and rPC.

Michaelis et al. (2019) summarise a detector's robustness by mPC, the mean score over all
corruptions and severities, and rPC = mPC / clean score (in %). `RobustnessTable` holds, per run
and data set, the clean score and the corruption x severity grid of one metric (the data set's DG
metric: VOC AP50, COCO AP, segmentation mIoU, as in `METRIC_KEYS`), derives the per-corruption
and per-severity means, mPC and rPC, and merges into `robustness_results.{json,md}` plus a heatmap
PNG in the output folder, one row per run name (a run evaluated again replaces its row), so
several methods end up side by side as in the DG table.

A cell can be undefined: rPC of a clean score of 0 (a model that scores nothing on the clean set,
as after a few iterations), or a score the evaluator returned as NaN (and every mean over it).
Such cells are JSON null, and each comes with its reason under `undefined` (`{cell: reason}`); the
markdown prints them as `n/a [k]` with the numbered reasons under the table, so an empty cell is
never mistaken for a score. A score that is not 0 but rounds to it prints as `<0.1`.
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

    def undefined(self) -> dict[str, str]:
        """{cell: why it has no value} for every undefined cell: "clean", "mPC", "rPC",
        "corruptions/<c>", "severities/<s>", "scores/<c>/<s>" (empty when every cell has one)."""
        nan = f"the evaluator returned NaN for {self.metric}"
        out: dict[str, str] = {}
        if math.isnan(self.clean):
            out["clean"] = f"{nan} on the clean set"
        for c, row in self.scores.items():
            for s, v in row.items():
                if math.isnan(v):
                    out[f"scores/{c}/{s}"] = f"{nan} under {c} severity {s}"
        if not self.scores:
            out["mPC"] = "no corruption was evaluated"
        for c, v in self.corruption_means().items():
            if math.isnan(v):
                out[f"corruptions/{c}"] = f"a score of {c} is undefined"
        for s, v in self.severity_means().items():
            if math.isnan(v):
                out[f"severities/{s}"] = f"a score at severity {s} is undefined"
        if math.isnan(self.mpc) and "mPC" not in out:
            out["mPC"] = "a score it averages is undefined"
        if self.clean == 0:
            out["rPC"] = (f"clean {self.metric} is 0 (the model scores nothing on the clean set), "
                          "so rPC = mPC / clean is undefined")
        elif math.isnan(self.rpc):
            out["rPC"] = "mPC or the clean score is undefined"
        return out

    def to_dict(self) -> dict:
        """JSON-ready; undefined values (rPC of a clean score of 0, NaN APs) become null, and
        `undefined` says why for each (`undefined()`)."""
        return {
            "metric": self.metric,
            "clean": _json_number(self.clean),
            "mPC": _json_number(self.mpc),
            "rPC": _json_number(self.rpc),
            "corruptions": {c: _json_number(v) for c, v in self.corruption_means().items()},
            "severities": {str(s): _json_number(v) for s, v in self.severity_means().items()},
            "scores": {c: {str(s): _json_number(v) for s, v in row.items()}
                       for c, row in self.scores.items()},
            "undefined": self.undefined(),
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> DatasetRobustness:
        return cls(
            metric=data["metric"],
            clean=_float(data["clean"]),
            scores={c: {int(s): _float(v) for s, v in row.items()}
                    for c, row in data["scores"].items()},
        )


def _number(v: float, digits: int) -> str:
    text = f"{v:.{digits}f}"
    if v != 0 and float(text) == 0:  # tiny but not 0: do not print it as a zero
        return f"<{10.0 ** -digits:.{digits}f}" if v > 0 else f">-{10.0 ** -digits:.{digits}f}"
    return text


class _Notes:
    """Numbered reasons for the undefined cells of one markdown table (one number per reason)."""

    def __init__(self) -> None:
        self.reasons: dict[str, list[str]] = {}

    def cell(self, v: float, reason: str | None, where: str, key: str, digits: int) -> str:
        if v is not None and not math.isnan(v):
            return _number(v, digits)
        reason = reason or "undefined"
        cells = self.reasons.setdefault(reason, [])
        if f"{where}: {key}" not in cells:
            cells.append(f"{where}: {key}")
        return f"n/a [{list(self.reasons).index(reason) + 1}]"

    def flush(self) -> str:
        """The reasons as a list under the table (and a fresh numbering for the next one)."""
        if not self.reasons:
            return ""
        lines = [f"[{k}] {reason} ({'; '.join(cells)})"
                 for k, (reason, cells) in enumerate(self.reasons.items(), 1)]
        self.reasons = {}
        return "\n\nEmpty cells (n/a):\n" + "\n".join(f"- {line}" for line in lines)


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
        """A summary (run x data set: clean, mPC, rPC, per corruption), then each grid; an
        undefined cell reads `n/a [k]`, and the reasons [k] follow each table."""
        notes = _Notes()
        corruptions = list(dict.fromkeys(
            c for sets in self.rows.values() for r in sets.values() for c in r.corruptions))
        summary = []
        for run, sets in self.rows.items():
            for ds, r in sets.items():
                why, where = r.undefined(), f"{run} / {ds}"

                def cell(v: float, key: str, why=why, where=where) -> str:
                    return notes.cell(v, why.get(key), where, key, digits)

                means = r.corruption_means()
                summary.append(
                    [run, ds, r.metric, cell(r.clean, "clean"), cell(r.mpc, "mPC"),
                     cell(r.rpc, "rPC")]
                    + [cell(means[c], f"corruptions/{c}") if c in means else
                       notes.cell(math.nan, "not evaluated for this run and data set", where, c,
                                  digits)
                       for c in corruptions])
        parts = [
            "Robustness to common corruptions (mPC: mean over corruptions and severities; "
            "rPC = mPC / clean, %)\n",
            tabulate(summary, headers=["run", "dataset", "metric", "clean", "mPC", "rPC (%)",
                                       *corruptions],
                     tablefmt="pipe", stralign="right", disable_numparse=True),
            notes.flush(),
        ]
        for run, sets in self.rows.items():
            for ds, r in sets.items():
                why, where = r.undefined(), f"{run} / {ds}"

                def cell(v: float, key: str, why=why, where=where) -> str:
                    return notes.cell(v, why.get(key), where, key, digits)

                sev = r.severities
                body = [[c] + [cell(row[s], f"scores/{c}/{s}") if s in row else
                               notes.cell(math.nan, "not evaluated", where, f"{c}/{s}", digits)
                               for s in sev]
                        + [cell(mean, f"corruptions/{c}")]
                        for (c, row), mean in zip(r.scores.items(), r.corruption_means().values())]
                sm = r.severity_means()
                body.append(["mean"] + [cell(sm[s], f"severities/{s}") for s in sev]
                            + [cell(r.mpc, "mPC")])
                title = (f"{r.metric}; clean {cell(r.clean, 'clean')}, mPC {cell(r.mpc, 'mPC')}, "
                         f"rPC {cell(r.rpc, 'rPC')} %")
                parts += [
                    f"\n\n{run} on {ds} ({title})\n",
                    tabulate(body, headers=["corruption"] + [f"severity {s}" for s in sev]
                             + ["mean"], tablefmt="pipe", stralign="right", disable_numparse=True),
                    notes.flush(),
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
