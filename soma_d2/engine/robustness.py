"""Evaluate every test set under every configured corruption x severity (`DATASETS.TEST_CORRUPTIONS`).

Runs after the clean evaluation (whose scores it reuses), through the same test mapper wrapped by
`CorruptingMapper`, or through stored copies when `DATASETS.TEST_CORRUPTION_DIR` lists them
(`tools/make_corrupted.py`); both feed the model the same pixels. Every process runs the loop, so
`--num-gpus N` shards each pass like the clean one; the main process logs progress with an ETA per
corruption and overall, and writes the robustness table.
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping

import torch
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, build_detection_test_loader
from detectron2.evaluation import DatasetEvaluator, inference_on_dataset
from detectron2.utils import comm

from ..data.corruptions import (
    CorruptingMapper,
    register_corrupted_copies,
    resolve_corruptions,
    resolve_severities,
)
from ..data.mapper_registry import build_mapper
from ..evaluation.dg_table import dg_run_name
from ..evaluation.robustness import (
    MARKDOWN_NAME,
    DatasetRobustness,
    RobustnessTable,
    metric_key_of,
    metric_value,
)
from ..modeling.segmentation import default_mapper_name

__all__ = ["corrupted_output_folder", "evaluate_corruptions", "print_robustness_table",
           "robustness_opts"]

logger = logging.getLogger(__name__)


def _fmt(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def corrupted_output_folder(output_dir: str, dataset: str, corruption: str, severity: int) -> str:
    """Where one corrupted pass's evaluator files go: below the data set's clean folder, so that
    `inference/<dataset>/` keeps the clean pass's scores (they were overwritten by the last
    corrupted pass before, and no longer matched the DG table)."""
    return os.path.join(output_dir, "inference", dataset, "corrupted", f"{corruption}-{severity}")


def _periodic_evaluation(cfg: CfgNode) -> bool:
    """Whether this is an evaluation during training before the last iteration."""
    from detectron2.utils.events import get_event_storage, has_event_storage

    return has_event_storage() and get_event_storage().iter + 1 < cfg.SOLVER.MAX_ITER


def evaluate_corruptions(
    cfg: CfgNode,
    model: torch.nn.Module,
    clean_results: Mapping[str, Mapping],
    build_evaluator: Callable[[CfgNode, str, str], DatasetEvaluator],
) -> RobustnessTable | None:
    """Score `model` on each `DATASETS.TEST` set under each corruption and severity.

    A full grid costs ~76 clean passes per test set, so periodic evaluations during training skip
    it; the final evaluation after the last iteration and `--eval-only` run it.

    `clean_results` are the clean pass's `{dataset: results}`; `build_evaluator(cfg, name,
    output_folder)` makes a fresh evaluator (the trainer's). Each corrupted pass writes its
    evaluator files to `inference/<dataset>/corrupted/<corruption>-<severity>/`
    (`corrupted_output_folder`), so the clean pass's `inference/<dataset>/` files keep the clean
    scores. Returns the merged table on the main process (None
    elsewhere, or when no corruption is configured).
    """
    if not cfg.DATASETS.TEST_CORRUPTIONS:
        return None
    if _periodic_evaluation(cfg):
        logger.info("DATASETS.TEST_CORRUPTIONS: skipped at this periodic evaluation (it runs after "
                    "the last iteration and with --eval-only)")
        return None
    corruptions = resolve_corruptions(cfg.DATASETS.TEST_CORRUPTIONS)
    severities = resolve_severities(cfg.DATASETS.TEST_CORRUPTION_SEVERITIES)
    copies = (register_corrupted_copies(cfg.DATASETS.TEST_CORRUPTION_DIR)
              if cfg.DATASETS.TEST_CORRUPTION_DIR else {})
    main = comm.is_main_process()

    def test_mapper():
        return build_mapper(cfg, False, default_mapper_name(cfg))

    table = RobustnessTable({dg_run_name(cfg): {}})
    row = table.rows[dg_run_name(cfg)]
    total = len(cfg.DATASETS.TEST) * len(corruptions) * len(severities)
    # the overall ETA weighs passes by their images: test sets differ widely in size
    sizes = {d: len(DatasetCatalog.get(d)) for d in cfg.DATASETS.TEST}
    images_total = sum(sizes.values()) * len(corruptions) * len(severities)
    start, done, images_done = time.perf_counter(), 0, 0
    for dataset in cfg.DATASETS.TEST:
        if main:
            row[dataset] = DatasetRobustness(
                metric="/".join(metric_key_of(dataset)),
                clean=metric_value(clean_results[dataset], dataset),
            )
        for ci, corruption in enumerate(corruptions):
            c_start = time.perf_counter()
            for si, severity in enumerate(severities):
                stored = copies.get((dataset, corruption, severity))
                folder = corrupted_output_folder(cfg.OUTPUT_DIR, dataset, corruption, severity)
                if stored is not None:
                    loader = build_detection_test_loader(cfg, stored, mapper=test_mapper())
                    evaluator = build_evaluator(cfg, stored, folder)
                else:
                    mapper = CorruptingMapper(test_mapper(), corruption, severity)
                    loader = build_detection_test_loader(cfg, dataset, mapper=mapper)
                    evaluator = build_evaluator(cfg, dataset, folder)
                results = inference_on_dataset(model, loader, evaluator)
                done += 1
                images_done += sizes[dataset]
                if not main:
                    continue
                value = metric_value(results, dataset)
                row[dataset].scores.setdefault(corruption, {})[severity] = value
                now = time.perf_counter()
                c_eta = (now - c_start) / (si + 1) * (len(severities) - si - 1)
                logger.info(
                    "robustness %s: %s (%d/%d) severity %d%s: %s %.2f | %d/%d passes, %s elapsed, "
                    "ETA %s for this corruption, %s overall", dataset, corruption, ci + 1,
                    len(corruptions), severity, " (stored copy)" if stored else "",
                    row[dataset].metric, value, done, total, _fmt(now - start), _fmt(c_eta),
                    _fmt((now - start) / images_done * (images_total - images_done)))
    if not main:
        return None
    merged = table.write(cfg.OUTPUT_DIR)
    logger.info("Robustness results (%s, written to %s):\n%s", dg_run_name(cfg), cfg.OUTPUT_DIR,
                table.to_markdown())
    return merged


def robustness_opts(corruptions: str, severities: str = "1,2,3,4,5") -> list[str]:
    """Config overrides for comma-separated command-line values (tools/demo.py --corruptions);
    empty when `corruptions` is. Names and severities are checked when the config is built."""
    names = tuple(c.strip() for c in corruptions.split(",") if c.strip())
    if not names:
        return []
    try:
        levels = tuple(int(s) for s in severities.split(",") if s.strip())
    except ValueError as e:
        raise ValueError(f"severities {severities!r}: comma-separated integers 1-5 expected") from e
    return ["DATASETS.TEST_CORRUPTIONS", repr(names),
            "DATASETS.TEST_CORRUPTION_SEVERITIES", repr(levels)]


def print_robustness_table(cfg: CfgNode) -> None:
    """Print OUTPUT_DIR's robustness table, when corruptions were evaluated."""
    path = os.path.join(cfg.OUTPUT_DIR, MARKDOWN_NAME)
    if cfg.DATASETS.TEST_CORRUPTIONS and os.path.exists(path):
        with open(path) as f:
            print(f"\n[demo] robustness to common corruptions ({path}):\n{f.read()}")
