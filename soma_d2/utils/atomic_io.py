"""Writing files without tearing: temporary file in the same directory, fsync, rename, dir fsync."""
from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from typing import IO, Any

import torch

__all__ = ["atomic_torch_save", "atomic_write", "atomic_write_text"]


def atomic_torch_save(obj: Any, path: str) -> None:
    """`torch.save` that never leaves a half-written `path`: temp file, fsync, rename, dir fsync."""
    atomic_write(path, "wb", lambda f: torch.save(obj, f))


def atomic_write_text(text: str, path: str) -> None:
    """Write a text file atomically (DG tables, Detectron2's `last_checkpoint` tag)."""
    atomic_write(path, "w", lambda f: f.write(text))


def atomic_write(path: str, mode: str, write: Callable[[IO], Any]) -> None:
    """Call `write(f)` on a temporary file next to `path`, fsync it, then rename it over `path`.

    Every file soma-d2 writes (checkpoints, adapters, DG tables, converted labels) goes through
    here, so an interrupted run never leaves a torn file behind: readers see the old or the new.
    """
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; match a plain open()
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    _fsync_dir(directory)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(directory: str) -> None:
    with contextlib.suppress(OSError):
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
