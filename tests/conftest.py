"""Suite-wide settings: one intra-op thread per process.

The suite runs tiny models, where thread start-up and contention cost more than they bring; on a
shared 2-core machine two torch threads per process made small steps up to 20x slower. Set before
torch is imported, so subprocess runs of tools/train_net.py inherit it too.
"""
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

# projects/<Name>/<package> importable (here and in tools/train_net.py subprocesses) even where the
# editable install predates the project, whose import path setup.py adds only on (re)install
_PROJECTS = [str(p) for p in sorted((Path(__file__).resolve().parents[1] / "projects").glob("*/"))]
sys.path[:0] = [p for p in _PROJECTS if p not in sys.path]
os.environ["PYTHONPATH"] = os.pathsep.join(
    [*_PROJECTS, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))])

import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

import logging  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _propagate_project_logs():
    """Detectron2's setup_logger (run by in-process train/eval tests) turns propagation off, which
    would hide later tests' records from caplog; give each test propagating loggers."""
    loggers = [logging.getLogger(name) for name in ("soma_d2", "detectron2", "d2")]
    saved = [lg.propagate for lg in loggers]
    for lg in loggers:
        lg.propagate = True
    yield
    for lg, value in zip(loggers, saved):
        lg.propagate = value
