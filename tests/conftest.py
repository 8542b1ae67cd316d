"""Suite-wide settings: one intra-op thread per process, and a private decomposition cache.

The suite runs tiny models, where thread start-up and contention cost more than they bring; on a
shared 2-core machine two torch threads per process made small steps up to 20x slower. Set before
torch is imported, so subprocess runs of tools/train_net.py inherit it too. Every test gets its
own empty SOMA_CACHE_DIR (module/session fixtures share one per session; subprocesses inherit
it): the suite never writes into the user's cache, and no test sees another test's entries.
"""
import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

# projects/<Name>/<package> importable (here and in tools/train_net.py subprocesses) even where the
# editable install predates the project, whose import path setup.py adds only on (re)install
_PROJECTS = [str(p) for p in sorted((Path(__file__).resolve().parents[1] / "projects").glob("*/"))]
sys.path[:0] = [p for p in _PROJECTS if p not in sys.path]
os.environ["PYTHONPATH"] = os.pathsep.join(
    [*_PROJECTS, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))])

# Module- and session-scoped fixtures run before any function-scoped fixture, so the cache
# directory is redirected at import time as well (removed when the session ends).
_SESSION_CACHE = tempfile.mkdtemp(prefix="soma_d2_test_cache_")
os.environ["SOMA_CACHE_DIR"] = _SESSION_CACHE
atexit.register(shutil.rmtree, _SESSION_CACHE, True)

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


@pytest.fixture(autouse=True)
def _private_decomposition_cache(tmp_path_factory, monkeypatch):
    """SoMA decomposition cache entries go to a fresh temporary directory per test."""
    monkeypatch.setenv("SOMA_CACHE_DIR", str(tmp_path_factory.mktemp("soma_cache")))


@pytest.fixture(scope="session")
def synthetic_dwd_root(tmp_path_factory) -> str:
    """The small synthetic weather data set (6 images of 128 px per domain, seed 0), written once
    per session; tests only read it."""
    from soma_d2.data.synthetic import generate_synthetic_dwd

    root = str(tmp_path_factory.mktemp("synthetic_dwd"))
    generate_synthetic_dwd(root, images_per_domain=6, image_size=128, seed=0, progress=False)
    return root


@pytest.fixture(scope="session")
def synthetic_semseg_root(tmp_path_factory) -> str:
    """The segmentation variant of the same scenes, written once per session (read only)."""
    from soma_d2.data.synthetic import generate_synthetic_semseg

    root = str(tmp_path_factory.mktemp("synthetic_semseg"))
    generate_synthetic_semseg(root, images_per_domain=6, image_size=128, seed=0, progress=False,
                              workers=1)
    return root
