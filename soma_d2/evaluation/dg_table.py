"""One domain-generalization table: rows = runs/methods, columns = source + targets + mean.

Detectron2 prints one small table per test set; a DG paper compares methods on the source and
each unseen target domain, and on the mean over the targets. `DGTable` builds that row from the
`{dataset_name: metrics}` dict a test pass returns, merges it into `dg_results.json` /
`dg_results.md` in the output folder (one row per run name, so several methods end up in one
table), and puts `dg/<domain>` scalars into Detectron2's EventStorage. The metric is generic:
`METRIC_KEYS` gives the key to read per evaluator type (VOC AP50, COCO AP, segmentation mIoU).
"""
from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from detectron2.data import MetadataCatalog
from detectron2.utils import comm
from tabulate import tabulate

from ..data.catalog import domain_from_name
from ..utils import atomic_write_text

__all__ = ["METRIC_KEYS", "DGTable", "dg_run_name", "dg_source_domain"]

logger = logging.getLogger(__name__)

# evaluator type (metadata) -> (task, metric) read from its results
METRIC_KEYS: dict[str, tuple[str, str]] = {
    "dg_voc": ("bbox", "AP50"),
    "pascal_voc": ("bbox", "AP50"),
    "dg_coco": ("bbox", "AP"),
    "coco": ("bbox", "AP"),
    "dg_sem_seg": ("sem_seg", "mIoU"),
    "sem_seg": ("sem_seg", "mIoU"),
}
DEFAULT_METRIC_KEY = ("bbox", "AP50")
JSON_NAME, MARKDOWN_NAME = "dg_results.json", "dg_results.md"


def _domain_of(dataset_name: str) -> str:
    return MetadataCatalog.get(dataset_name).get("domain", None) or domain_from_name(dataset_name)


def dg_source_domain(cfg) -> str:
    """The source domain of a config: the domain of the first data set in `DATASETS.TRAIN`."""
    if not cfg.DATASETS.TRAIN:
        raise ValueError("cfg.DATASETS.TRAIN is empty: no source domain to report against")
    return _domain_of(cfg.DATASETS.TRAIN[0])


def dg_run_name(cfg) -> str:
    """Row label of a config: `TEST.DG.RUN_NAME`, else the name of `OUTPUT_DIR`."""
    name = cfg.TEST.DG.RUN_NAME
    return name or os.path.basename(os.path.normpath(cfg.OUTPUT_DIR)) or "run"


def _order_domains(domains: Sequence[str], source: str,
                   order: Mapping[str, int] | None = None) -> list[str]:
    """Source first; then the benchmark's column order when every target's data set declares one
    (metadata `domain_order`, e.g. Diverse Weather's), else as given."""
    rest = [d for d in dict.fromkeys(domains) if d != source]
    if order and all(d in order for d in rest):
        rest.sort(key=order.__getitem__)
    return ([source] if source in domains else []) + rest


@dataclass
class DGTable:
    """Per-domain values of one metric for one or more runs (see the module doc)."""

    metric: str  # "task/key", e.g. "bbox/AP50"
    source: str
    domains: list[str]  # column order, the source first when present
    rows: dict[str, dict[str, float]] = field(default_factory=dict)  # run -> domain -> value
    run_name: str | None = None  # the run `from_results` built (what log_to_storage reports)

    @property
    def targets(self) -> list[str]:
        return [d for d in self.domains if d != self.source]

    def mean_target(self, run: str) -> float | None:
        """Mean over all target columns, or None when the run lacks one of them."""
        values = self.rows[run]
        if not self.targets or any(d not in values for d in self.targets):
            return None
        return sum(values[d] for d in self.targets) / len(self.targets)

    def mean_all(self, run: str) -> float | None:
        """Mean over every domain, source included: the official DWD "mean" (DGVOCMetric)."""
        values = self.rows[run]
        if not self.domains or any(d not in values for d in self.domains):
            return None
        return sum(values[d] for d in self.domains) / len(self.domains)

    @classmethod
    def from_results(
        cls,
        results: Mapping[str, Mapping],
        run_name: str,
        source_domain: str | None = None,
        metric_key: tuple[str, str] | None = None,
    ) -> DGTable:
        """A one-row table from `{dataset_name: {task: {metric: value}}}` (a test pass's results).

        `metric_key` default: from the data sets' `evaluator_type` (`METRIC_KEYS`), else
        `("bbox", "AP50")`. `source_domain` default: the domain of the first data set (pass
        `dg_source_domain(cfg)` to use the training set's). Domains come from the metadata
        `domain`; two data sets of the same domain are refused.
        """
        if not results:
            raise ValueError("DGTable.from_results: no results to tabulate")
        if any(k in results for k in ("bbox", "segm", "sem_seg")):
            raise ValueError(
                "DGTable.from_results expects {dataset_name: metrics}; got a single data set's "
                f"metrics (keys {list(results)}); pass the per-data-set dict"
            )
        if metric_key is None:
            types = {
                MetadataCatalog.get(n).get("evaluator_type", None) for n in results
            } & set(METRIC_KEYS)
            keys = {METRIC_KEYS[t] for t in types}
            if len(keys) > 1:
                raise ValueError(
                    f"the data sets mix evaluator types {sorted(types)}; pass metric_key"
                )
            metric_key = keys.pop() if keys else DEFAULT_METRIC_KEY
        task, key = metric_key
        values: dict[str, float] = {}
        dataset_of: dict[str, str] = {}
        for name, metrics in results.items():
            domain = _domain_of(name)
            if domain in dataset_of:
                raise ValueError(
                    f"data sets {dataset_of[domain]!r} and {name!r} both have domain {domain!r}; "
                    "evaluate one data set per domain or register them with distinct domains"
                )
            try:
                values[domain] = float(metrics[task][key])
            except (KeyError, TypeError) as e:
                found = {t: list(m) if isinstance(m, Mapping) else m for t, m in metrics.items()}
                raise KeyError(f"results of {name!r} have no {task}/{key}; found {found}") from e
            dataset_of[domain] = name
        order = {d: MetadataCatalog.get(n).get("domain_order") for d, n in dataset_of.items()}
        order = {d: i for d, i in order.items() if i is not None}
        source = source_domain or next(iter(values))
        return cls(
            metric=f"{task}/{key}",
            source=source,
            domains=_order_domains(list(values), source, order),
            rows={run_name: values},
            run_name=run_name,
        )

    def merge(self, other: DGTable) -> DGTable:
        """Rows of both tables (`other`'s replace same-named ones); columns are the union."""
        if (self.metric, self.source) != (other.metric, other.source):
            raise ValueError(
                f"cannot merge a {other.metric} table with source {other.source!r} into a "
                f"{self.metric} table with source {self.source!r}"
            )
        rows = {**self.rows, **other.rows}
        domains = _order_domains(self.domains + other.domains, self.source)
        return DGTable(self.metric, self.source, domains, rows, other.run_name or self.run_name)

    def to_dict(self) -> dict:
        return {
            "metric": self.metric,
            "source": self.source,
            "domains": self.domains,
            "targets": self.targets,
            "rows": [
                {"run": run, "values": values, "mean_target": self.mean_target(run),
                 "mean_all": self.mean_all(run)}
                for run, values in self.rows.items()
            ],
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> DGTable:
        try:
            return cls(
                metric=data["metric"],
                source=data["source"],
                domains=list(data["domains"]),
                rows={
                    r["run"]: {d: float(v) for d, v in r["values"].items()} for r in data["rows"]
                },
            )
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"not a DG table: missing or malformed key ({e})") from e

    def to_markdown(self, digits: int = 1) -> str:
        """The table as GitHub markdown: one row per run, source and targets, mean over targets
        and mean over all domains (the official DWD "mean")."""

        def cell(v: float | None) -> str:
            return "-" if v is None or math.isnan(v) else f"{v:.{digits}f}"

        headers = ["run"] + [
            f"{d} (source)" if d == self.source else d for d in self.domains
        ] + ["mean (targets)", "mean (all)"]
        body = [
            [run] + [cell(values.get(d)) for d in self.domains]
            + [cell(self.mean_target(run)), cell(self.mean_all(run))]
            for run, values in self.rows.items()
        ]
        return (
            f"Domain generalization ({self.metric}, source: {self.source})\n\n"
            + tabulate(
                body, headers=headers, tablefmt="pipe", stralign="right", disable_numparse=True
            )
            + "\n"
        )

    def __str__(self) -> str:
        return self.to_markdown()

    def write(self, output_dir: str) -> DGTable:
        """Merge into `<output_dir>/dg_results.{json,md}` and return the merged table.

        A file holding another metric or source is moved aside to `*.bak` (with a warning)
        rather than mixed into this table. Only the main process writes.
        """
        if not comm.is_main_process():
            return self
        os.makedirs(output_dir, exist_ok=True)
        json_path = os.path.join(output_dir, JSON_NAME)
        md_path = os.path.join(output_dir, MARKDOWN_NAME)
        table = self
        if os.path.exists(json_path):
            try:
                with open(json_path) as f:
                    previous = DGTable.from_dict(json.load(f))
                table = previous.merge(self)
            except (ValueError, OSError) as e:
                logger.warning("%s cannot be merged (%s); moving it to %s.bak", json_path, e,
                               json_path)
                for path in (json_path, md_path):
                    if os.path.exists(path):
                        os.replace(path, path + ".bak")
        for path, text in (
            (json_path, json.dumps(table.to_dict(), indent=2) + "\n"),
            (md_path, table.to_markdown()),
        ):
            atomic_write_text(text, path)
        return table

    def log_to_storage(self, run: str | None = None) -> bool:
        """Put `dg/<domain>` and `dg/mean_target` of `run` (default: this table's run) into the
        active EventStorage; returns False when no storage is active."""
        from detectron2.utils.events import get_event_storage, has_event_storage

        if not has_event_storage():
            return False
        run = run or self.run_name or next(iter(self.rows))
        storage = get_event_storage()
        for domain, value in self.rows[run].items():
            storage.put_scalar(f"dg/{domain}", value, smoothing_hint=False)
        mean = self.mean_target(run)
        if mean is not None:
            storage.put_scalar("dg/mean_target", mean, smoothing_hint=False)
        mean_all = self.mean_all(run)
        if mean_all is not None:
            storage.put_scalar("dg/mean_all", mean_all, smoothing_hint=False)
        return True
