"""Loader workers in spawned processes (issue 18): Detectron2's `launch` starts its processes with
"spawn", so their loader workers are spawned too and receive the dataset by pickle. The resumable
training stream must survive that (with its skip) and a 2-process gloo run with a worker per
loader must train, evaluate and write the DG table."""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys

import torch
from detectron2.data.samplers import TrainingSampler
from torch.utils.data import DataLoader

from soma_d2.data.sampler import ResumableSampler, build_resumable_train_loader
from soma_d2.data.synthetic import generate_synthetic_dwd

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs", "test", "tiny_soma_det.yaml")


def _spawned_loader(start_iter: int) -> DataLoader:
    records = [{"image_id": i} for i in range(8)]
    loader, sampler = build_resumable_train_loader(
        dataset=records, mapper=dict, sampler=TrainingSampler(len(records), seed=3),
        total_batch_size=2, aspect_ratio_grouping=False, num_workers=1,
        multiprocessing_context="spawn")
    assert isinstance(loader, DataLoader)
    assert isinstance(sampler, ResumableSampler) and loader.generator is not None
    sampler.set_start_iter(start_iter, images_per_rank=2)
    return loader


def _first_ids(loader: DataLoader, batches: int) -> list[int]:
    it = iter(loader)
    ids = [d["image_id"] for _ in range(batches) for d in next(it)]
    del it  # shuts the worker down
    return ids


def test_pickled_resumable_sampler_keeps_its_stream_but_not_the_generators():
    loader = _spawned_loader(start_iter=1)
    sampler = loader.dataset.sampler
    copy = pickle.loads(pickle.dumps(sampler))
    assert copy._generators == [] and sampler._generators == [loader.generator]
    assert copy.skip == sampler.skip == 2
    assert list(zip(range(6), copy)) == list(zip(range(6), sampler))


def test_spawned_worker_continues_the_resumed_stream():
    full = _first_ids(_spawned_loader(start_iter=0), batches=3)
    resumed = _first_ids(_spawned_loader(start_iter=1), batches=2)
    assert resumed == full[2:]


def test_two_gloo_processes_with_loader_workers_train_and_evaluate(tmp_path):
    data = str(tmp_path / "data")
    generate_synthetic_dwd(data, images_per_domain=4, image_size=128, seed=0, progress=False)
    out = str(tmp_path / "out")
    cmd = [sys.executable, os.path.join(REPO, "tools", "train_net.py"), "--config-file", TINY,
           "--num-gpus", "2", "MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", "1",
           "DATASETS.DWD_ROOT", data, "OUTPUT_DIR", out, "SOLVER.MAX_ITER", "2",
           "SOLVER.CHECKPOINT_PERIOD", "100", "DATASETS.TEST", "('tiny_night_sunny',)"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
    tail = proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.returncode == 0, tail
    assert "unable to resize file" not in proc.stderr, tail
    log = open(os.path.join(out, "log.txt")).read()
    assert "All 2 ranks hold identical trainable weights" in log
    metrics = [json.loads(line) for line in open(os.path.join(out, "metrics.json"))]
    assert [row["iteration"] for row in metrics if "total_loss" in row] == [0, 1]
    assert any("dg/night_sunny" in row for row in metrics)
    table = json.load(open(os.path.join(out, "dg_results.json")))
    assert "night_sunny" in json.dumps(table)
    state = torch.load(os.path.join(out, "model_final.pth"), weights_only=True)["model"]
    assert any(k.endswith(".A") for k in state)
