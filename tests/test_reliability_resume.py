"""Deterministic resume through tools/train_net.py: a run SIGKILLed after a checkpoint and resumed
with --resume ends with exactly the weights of an uninterrupted run (same seed, CPU, one thread).

This needs the three things a resume restores beyond Detectron2's defaults: the data stream
continuing where it stopped (`ResumableSampler`), the global RNG states of augmentation and RPN/ROI
sampling (`RNGState` checkpointable), and the trainer state itself.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import train_net_helpers as helpers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs", "test", "tiny_soma_det.yaml")
# the kill must land after iteration 2's checkpoint and before the next one: the wrapper stalls
# the start of iteration 4 (iteration 3 is done in memory, not saved) so the test can kill it there
STALL_WRAPPER = """
import sys, time
sys.path.insert(0, {repo!r})
sys.argv = ["train_net.py", *{args!r}]
from detectron2.engine import HookBase
from soma_d2.engine.trainer import SoMATrainer

class Stall(HookBase):
    def before_step(self):
        if self.trainer.iter == 4:
            time.sleep(120)

build_hooks = SoMATrainer.build_hooks
SoMATrainer.build_hooks = lambda self: [*build_hooks(self), Stall()]
import runpy
runpy.run_path({script!r}, run_name="__main__")
"""


def _env() -> dict[str, str]:
    # one intra-op thread: bitwise-reproducible CPU kernels, and no oversubscription on 2 cores
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _args(data_root: str, out: str, *extra: str) -> list[str]:
    return ["--config-file", TINY, *extra, "DATASETS.DWD_ROOT", data_root, "OUTPUT_DIR", out,
            "SOLVER.MAX_ITER", "6", "SOLVER.CHECKPOINT_PERIOD", "3", "DATASETS.TEST", "()",
            "SOLVER.STEPS", "(4,)", "MODEL.VIT.DROP_PATH_RATE", "0.2", "SEED", "7"]


def _run(args: list[str]) -> None:
    cmd = [sys.executable, os.path.join(REPO, "tools", "train_net.py"), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO, env=_env())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def _weights(path: str) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


@pytest.fixture(scope="module")
def data_root(synthetic_dwd_root) -> str:
    return synthetic_dwd_root


def test_sigkill_after_checkpoint_then_resume_matches_uninterrupted_run(data_root, tmp_path):
    full, killed = str(tmp_path / "full"), str(tmp_path / "killed")
    _run(_args(data_root, full))

    script = STALL_WRAPPER.format(repo=REPO, args=_args(data_root, killed),
                                  script=os.path.join(REPO, "tools", "train_net.py"))
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    log = os.path.join(killed, "metrics.json")
    # iteration 3's metrics are written after its step: then the process is stalled at 4
    helpers.sigkill_when(
        proc, lambda: os.path.isfile(log) and '"iteration": 3' in open(log).read())
    assert open(os.path.join(killed, "last_checkpoint")).read() == "model_0000002.pth"
    assert not os.path.exists(os.path.join(killed, "model_final.pth"))

    _run(_args(data_root, killed, "--resume"))
    a = _weights(os.path.join(full, "model_final.pth"))
    b = _weights(os.path.join(killed, "model_final.pth"))
    assert a.keys() == b.keys()
    diffs = {k: (a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].numel()}
    worst = max(diffs, key=diffs.get)
    assert diffs[worst] <= 1e-6, f"{worst}: max abs diff {diffs[worst]}"
    # training moved the weights, so the comparison above is not trivially satisfied
    start = _weights(os.path.join(full, "model_0000002.pth"))
    assert any(not torch.equal(a[k], start[k]) for k in a if k.endswith(".A"))


# ---- the pieces, in-process ---------------------------------------------------------------------


def _draws() -> tuple:
    import random

    import numpy as np

    return (random.random(), np.random.rand(), np.random.randint(1 << 30), torch.rand(3).tolist())


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    from soma_d2.engine.rng import RNGState, preserved_rng

    state = RNGState()
    path = str(tmp_path / "rng.pth")
    torch.save({"rng": state.state_dict()}, path)
    expected = _draws()
    _draws()  # move on, as training would
    state.load_state_dict(torch.load(path, weights_only=True)["rng"])
    assert _draws() == expected

    before = RNGState().state_dict()["states"]
    with preserved_rng():
        _draws()
    assert torch.equal(RNGState().state_dict()["states"]["torch"], before["torch"])


@pytest.mark.parametrize("grouping", [True, False])
def test_resumable_sampler_continues_the_stream_inside_detectron2_loader(grouping):
    from detectron2.data.samplers import TrainingSampler

    from soma_d2.data.sampler import ResumableSampler, build_resumable_train_loader

    records = [{"i": i, "width": 8, "height": 6} for i in range(7)]

    def loader():
        return build_resumable_train_loader(
            dataset=records, mapper=lambda d: d, total_batch_size=2,
            sampler=TrainingSampler(7, seed=3), aspect_ratio_grouping=grouping, num_workers=0)

    full, sampler = loader()
    assert isinstance(sampler, ResumableSampler) and sampler.seed == 3
    stream = [[d["i"] for d in batch] for _, batch in zip(range(9), full)]

    resumed, sampler = loader()
    sampler.set_start_iter(5, 2)
    torch_state = torch.get_rng_state()
    tail = [[d["i"] for d in batch] for _, batch in zip(range(4), resumed)]
    assert tail == stream[5:]
    # creating the loader's iterator drew nothing from torch's global RNG (restored on resume)
    assert torch.equal(torch.get_rng_state(), torch_state)
