"""Faults around checkpoints: a save that dies midway (an exception after partial output, or a
SIGKILLed process) leaves the previous checkpoint and `last_checkpoint` intact and resumable; a
diverged model is never saved; a non-finite loss stops training with a message naming the iteration
and the loss terms without writing anything afterwards; an unwritable or full OUTPUT_DIR fails
before training starts."""
from __future__ import annotations

import errno
import glob
import logging
import os
import subprocess
import sys

import pytest
import torch
import train_net_helpers as helpers
from torch import nn

from soma_d2.checkpoint import safe_load
from soma_d2.checkpoint.checkpointer import SoMACheckpointer
from soma_d2.config import build_cfg
from soma_d2.data import register_dwd
from soma_d2.data.synthetic import generate_synthetic_dwd
from soma_d2.engine.trainer import ADAPTER_FILENAME, SoMATrainer, check_output_dir_writable

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs", "test", "tiny_soma_det.yaml")


def _model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8))


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _assert_resumes_to(save_dir: str, expected: nn.Module) -> None:
    fresh = _model(seed=99)
    SoMACheckpointer(fresh, save_dir).resume_or_load("", resume=True)
    for (name, a), b in zip(expected.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), name


def test_save_failing_after_partial_output_keeps_previous_checkpoint(tmp_path, monkeypatch):
    good = _model(seed=1)
    SoMACheckpointer(good, str(tmp_path)).save("model_0000001")
    before = (tmp_path / "model_0000001.pth").read_bytes()

    def torn_save(obj, f, *args, **kwargs):  # a disk that fills up after 1000 bytes
        f.write(b"\x00" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safe_load.torch, "save", torn_save)
    for name in ("model_0000002", "model_0000001"):  # a new file, and overwriting the old one
        with pytest.raises(OSError, match="No space left"):
            SoMACheckpointer(_model(seed=2), str(tmp_path)).save(name)
    monkeypatch.undo()

    assert _read(tmp_path / "last_checkpoint") == "model_0000001.pth"
    assert (tmp_path / "model_0000001.pth").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000001.pth"]  # no debris
    _assert_resumes_to(str(tmp_path), good)


KILLED_WRITER = """
import sys, time, torch
from torch import nn
sys.path.insert(0, {repo!r})
from soma_d2.checkpoint import safe_load
from soma_d2.checkpoint.checkpointer import SoMACheckpointer

torch.manual_seed(1)
good = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8))
SoMACheckpointer(good, {out!r}).save("model_0000001")
real_save = torch.save

def slow_save(obj, f, *args, **kwargs):  # write the first MiB of a real checkpoint, then hang
    real_save({{"blob": torch.zeros(2**20)}}, f)
    f.flush()
    time.sleep(120)

safe_load.torch.save = slow_save
with torch.no_grad():
    for p in good.parameters():
        p.add_(1.0)
SoMACheckpointer(good, {out!r}).save("model_0000001")  # overwrite, killed midway
"""


def test_sigkill_during_save_keeps_previous_checkpoint_and_resumes(tmp_path):
    out = str(tmp_path)
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER.format(repo=REPO, out=out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    temp: list[str] = []

    def torn_write_under_way() -> bool:
        temp[:] = glob.glob(os.path.join(out, ".model_0000001.pth.*.tmp"))
        return bool(temp) and os.path.getsize(temp[0]) >= 2**20

    helpers.sigkill_when(proc, torn_write_under_way, timeout=120)
    assert os.path.exists(temp[0])  # the torn write is in the temp file, not the checkpoint
    assert _read(os.path.join(out, "last_checkpoint")) == "model_0000001.pth"
    _assert_resumes_to(out, _model(seed=1))  # the previous weights, bit for bit

    # the next save removes the debris of the killed one
    SoMACheckpointer(_model(seed=3), out).save("model_0000002")
    assert sorted(os.listdir(out)) == ["last_checkpoint", "model_0000001.pth", "model_0000002.pth"]


def test_diverged_weights_are_never_saved(tmp_path):
    model = _model(seed=1)
    SoMACheckpointer(model, str(tmp_path)).save("model_0000001")
    with torch.no_grad():
        model[2].weight[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match=r"NaN/inf.*2\.weight"):
        SoMACheckpointer(model, str(tmp_path)).save("model_final")
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000001.pth"]
    assert _read(tmp_path / "last_checkpoint") == "model_0000001.pth"


# ---- the trainer: non-finite loss, unwritable or full OUTPUT_DIR --------------------------------


@pytest.fixture
def one_thread():
    """Training in-process with one intra-op thread: 2 threads on 2 busy cores are much slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("synthetic_dwd"))
    generate_synthetic_dwd(root, images_per_domain=4, image_size=128, seed=0, progress=False)
    return root


def _cfg(data_root: str, out: str, *opts: str):
    cfg = build_cfg(TINY, ["DATASETS.DWD_ROOT", data_root, "OUTPUT_DIR", out, *opts])
    register_dwd(root=data_root, prefix=cfg.DATASETS.DWD_PREFIX)
    return cfg


def test_non_finite_loss_stops_training_and_keeps_last_good_checkpoint(tiny_data, tmp_path,
                                                                    one_thread):
    out = str(tmp_path / "run")
    trainer = SoMATrainer(_cfg(tiny_data, out, "SOLVER.MAX_ITER", "4",
                               "SOLVER.CHECKPOINT_PERIOD", "2"))
    trainer.resume_or_load(resume=False)

    def poison(module, inputs, losses):  # the last iteration's classification loss turns NaN
        if module.training and trainer.iter == 3:
            losses = dict(losses, loss_cls=losses["loss_cls"] * float("nan"))
        return losses

    trainer.model.register_forward_hook(poison)
    with pytest.raises(FloatingPointError) as info:
        trainer.train()
    message = str(info.value)
    assert "iteration=3" in message and "loss_cls" in message and "loss_box_reg" in message
    assert "model_0000001.pth" in message  # names the last good checkpoint
    assert _read(os.path.join(out, "last_checkpoint")) == "model_0000001.pth"
    written = set(os.listdir(out))
    assert "model_0000001.pth" in written
    # Detectron2 alone would evaluate the failed model (EvalHook: iter + 1 >= max_iter)
    for name in ("model_final.pth", "model_0000003.pth", ADAPTER_FILENAME, "dg_results.json"):
        assert name not in written, name


def _unwritable_dir(path) -> str:
    """A directory in which files cannot be created: permission bits stop users; root ignores
    them, so it gets the immutable flag; where even that is refused, a file blocks the path."""
    os.makedirs(path)
    os.chmod(path, 0o555)
    if os.access(path, os.W_OK) and subprocess.run(["chattr", "+i", str(path)],
                                                   capture_output=True).returncode != 0:
        (path / "file").write_text("")
        return str(path / "file" / "out")
    return str(path)


def test_unwritable_output_dir_fails_before_anything_is_built(tiny_data, tmp_path, monkeypatch):
    out = _unwritable_dir(tmp_path / "ro")
    try:
        calls = []
        monkeypatch.setattr(SoMATrainer, "build_model", classmethod(lambda *a: calls.append(a)))
        with pytest.raises(RuntimeError, match=r"OUTPUT_DIR=.*is not writable") as info:
            SoMATrainer(_cfg(tiny_data, out))
        assert out in str(info.value) and calls == []
    finally:
        subprocess.run(["chattr", "-i", str(tmp_path / "ro")], capture_output=True)
        os.chmod(tmp_path / "ro", 0o755)


def test_full_disk_fails_before_training(tiny_data, tmp_path, monkeypatch, caplog):
    out = str(tmp_path / "out")
    real_fsync = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(RuntimeError, match=r"is not writable \(No space left on device\)"):
        check_output_dir_writable(out)
    monkeypatch.setattr(os, "fsync", real_fsync)

    # a few KiB free pass the probe, but not the size of one checkpoint of this model
    import shutil

    usage = shutil.disk_usage(out)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=64 * 1024))
    monkeypatch.setattr(SoMATrainer, "build_train_loader",
                        classmethod(lambda *a: pytest.fail("data loaded before the check")))
    with caplog.at_level(logging.WARNING), pytest.raises(RuntimeError) as info:
        SoMATrainer(_cfg(tiny_data, out))
    assert f"OUTPUT_DIR={out!r} has 0.1 MiB free" in str(info.value)
    assert "one checkpoint needs about" in str(info.value)
