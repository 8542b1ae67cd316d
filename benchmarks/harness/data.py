"""Benchmark 4: can the detection data pipeline feed the detector's training step?

On the synthetic weather data (written to a temporary folder) this measures, in images/s: the
Detectron2 train loader exactly as the trainer builds it (recipe augmentations, the config's
worker count, aspect-ratio grouping); the mapper alone in this process (the per-image cost of
decoding and augmenting); and the demo config's detector training step on batches fetched
beforehand (forward, losses, backward, optimizer step), the baseline. Repetitions interleave the
three, plus the training step fed by the live loader (what a trainer sees: data and model share
the cores). The loader's workers keep prefetching while the others run, so each loader repetition
first drains what they buffered, untimed, and then times steady-state batches.
"""
from __future__ import annotations

import copy
import itertools
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .measure import Timer, paired_ratio, run_interleaved, summarize
from .report import fmt_ratio, fmt_stats, goal, make_result, render

__all__ = ["DATA_PRESETS", "DataSpec", "data_table", "run_data_benchmark"]

REPO_ROOT = Path(__file__).resolve().parents[2]
PREFETCH_FACTOR = 2  # torch DataLoader default, which Detectron2's train loader keeps


@dataclass(frozen=True)
class DataSpec:
    """Config file (absolute, or relative to the repository root), synthetic data size, training
    steps and loader/mapper batches per repetition, and extra config overrides."""

    config_file: str
    images_per_domain: int
    image_size: int
    batches: int
    loader_batches: int
    opts: tuple[str, ...] = ()

    def config_path(self) -> str:
        path = Path(self.config_file)
        return str(path if path.is_absolute() else REPO_ROOT / path)


DATA_PRESETS = {
    "T": DataSpec("configs/test/tiny_soma_det.yaml", images_per_domain=4, image_size=96,
                  batches=2, loader_batches=2, opts=("DATALOADER.NUM_WORKERS", "0")),
    "S": DataSpec("configs/demo/synthetic_soma.yaml", images_per_domain=20, image_size=320,
                  batches=4, loader_batches=12),
    "B": DataSpec("configs/demo/synthetic_soma.yaml", images_per_domain=40, image_size=320,
                  batches=8, loader_batches=24),
    "L": DataSpec("configs/demo/synthetic_soma.yaml", images_per_domain=40, image_size=320,
                  batches=8, loader_batches=24),
}


def _detector_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                   batch: list[dict]) -> None:
    """What Detectron2's SimpleTrainer.run_step does, without the metric bookkeeping."""
    losses = sum(model(batch).values())
    optimizer.zero_grad()
    losses.backward()
    optimizer.step()


def run_data_benchmark(spec: DataSpec, repeats: int = 3, device: str = "cpu", seed: int = 0,
                       progress: Callable[[str], None] | None = None) -> dict:
    """Loader, mapper and training-step throughput (images/s) on freshly written synthetic data;
    ratios against the training step."""
    from detectron2.data import DatasetCatalog, build_detection_train_loader
    from detectron2.modeling import build_model
    from detectron2.utils.events import EventStorage

    from soma_d2 import modeling  # noqa: F401  (registers the SoMA backbone)
    from soma_d2.config import build_cfg
    from soma_d2.data import register_dwd
    from soma_d2.data.detection_mapper import build_detection_mapper
    from soma_d2.data.synthetic import generate_synthetic_dwd
    from soma_d2.solver import build_optimizer

    config_path = spec.config_path()
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"data benchmark: config file {config_path!r} does not exist")
    root = tempfile.mkdtemp(prefix="soma_bench_data_")
    batches_iter = None
    try:
        start = time.perf_counter()
        generate_synthetic_dwd(root, spec.images_per_domain, spec.image_size, seed=seed,
                               progress=False)
        gen_seconds = time.perf_counter() - start
        prefix = f"bench{os.getpid()}"
        train_name = register_dwd(root=root, prefix=prefix)[0]
        cfg = build_cfg(config_path, [
            "DATASETS.DWD_ROOT", root, "DATASETS.DWD_PREFIX", prefix,
            "DATASETS.TRAIN", f"('{train_name}',)", "DATASETS.TEST", "()",
            "MODEL.DEVICE", device, "SEED", str(seed), *spec.opts])
        batch_size = int(cfg.SOLVER.IMS_PER_BATCH)
        workers = int(cfg.DATALOADER.NUM_WORKERS)
        torch.manual_seed(seed)
        mapper = build_detection_mapper(cfg, True)
        batches_iter = iter(build_detection_train_loader(cfg, mapper=mapper))
        pool = [next(batches_iter) for _ in range(spec.batches)]
        dicts = DatasetCatalog.get(train_name)
        records = itertools.cycle(dicts)
        model = build_model(cfg)
        model.train()
        optimizer = build_optimizer(cfg, model)
        dev = torch.device(cfg.MODEL.DEVICE)
        images = spec.batches * batch_size
        loader_images = spec.loader_batches * batch_size
        # batches the workers can hold ready while the other cases run, plus the one in flight
        skip = -(-(workers * PREFETCH_FACTOR) // batch_size) + 1 if workers else 0

        def loader() -> float:
            for _ in range(skip):
                next(batches_iter)
            with Timer() as t:
                for _ in range(spec.loader_batches):
                    next(batches_iter)
            return loader_images / t.seconds

        def mapper_only() -> float:
            todo = [copy.deepcopy(next(records)) for _ in range(loader_images)]
            with Timer() as t:
                for record in todo:
                    mapper(record)
            return loader_images / t.seconds

        def train_step() -> float:
            with Timer(dev) as t:
                for batch in pool:
                    _detector_step(model, optimizer, batch)
            return images / t.seconds

        def train_fed() -> float:
            with Timer(dev) as t:
                for _ in range(spec.batches):
                    _detector_step(model, optimizer, next(batches_iter))
            return images / t.seconds

        cases = {"loader": loader, "mapper": mapper_only, "train_step": train_step,
                 "train_fed": train_fed}
        with EventStorage(0):  # the detector's losses log into the current event storage
            samples = run_interleaved(cases, repeats=repeats, warmup=1, progress=progress)
    finally:
        if batches_iter is not None and hasattr(batches_iter, "close"):
            batches_iter.close()
        shutil.rmtree(root, ignore_errors=True)
    plural = "" if workers == 1 else "s"
    labels = {"loader": f"train loader ({workers} worker{plural}, recipe augmentations)",
              "mapper": "mapper alone (1 process)",
              "train_step": "detector training step, batches ready (baseline)",
              "train_fed": "detector training step fed by the live loader"}
    rows = [{"method": name, "label": labels[name], "stats": summarize(samples[name]),
             **paired_ratio(samples[name], samples["train_step"])} for name in cases]
    settings = {**asdict(spec), "config_file": os.path.relpath(config_path, REPO_ROOT),
                "device": str(dev), "repeats": repeats, "seed": seed,
                "ims_per_batch": batch_size, "num_workers": workers,
                "input_size": int(cfg.INPUT.IMAGE_SIZE), "train_images": len(dicts),
                "data_generated_s": gen_seconds, "loader_batches_skipped": skip}
    result = make_result("data", "Data pipeline vs detector training step (images/s)", settings,
                         "train_step", "images/s", True, rows)
    by = {r["method"]: r for r in rows}
    result["goals"].append(goal("loader images/s / training images/s (loader keeps up)",
                                by["loader"]["ratio"], ">=", 1.0))
    result["notes"].append(
        f"{os.path.relpath(config_path, REPO_ROOT)}: batch {batch_size}, input "
        f"{cfg.INPUT.IMAGE_SIZE} px, {len(dicts)} training images of {spec.image_size} px "
        f"(written in {gen_seconds:.1f} s, not timed). The loader alone has the cores to itself; "
        "fed by the loader, training shares them with its workers.")
    return result


def data_table(result: dict) -> str:
    """The data benchmark as a markdown table with goals and notes."""
    headers = ["stage", "images/s, median [min-max]", "vs training step"]
    cells = [[r["label"], fmt_stats(r["stats"]), fmt_ratio(r)] for r in result["rows"]]
    return render(result, headers, cells)
