"""On-disk cache of SoMA decompositions: every run of the same config skips the SVD.

Training runs, evaluations and adapter loads all decompose the same pretrained weights again
(seconds to tens of seconds for a ViT-L on CPU). An entry holds the r float64 singular triplets of
every target matrix and is keyed by a SHA-256 digest of exactly what determines them: the bytes,
shapes and dtypes of the matrices (so another pretrained file, or another conversion of it, misses),
the module names (target set), the ranks, which end of the spectrum (mode) and the decomposition
method with the device type it ran on. Entries are safetensors files written atomically (a reader
never sees a torn file) under ``SOMA_CACHE_DIR`` (default ``$XDG_CACHE_HOME/soma_d2`` or
``~/.cache/soma_d2``). Each entry also carries, per matrix, the fingerprints adapter files store
(of ``W`` and of the rank-r product ``U S V^T``). On a hit the product fingerprints are checked
against the loaded triplets; the weights need no second check, since the key already digests
their exact bytes, so a layer built from a hit takes its ``W`` fingerprint from the entry
instead of another pass over the weight. An entry that fails (corrupted, truncated, mismatched) is ignored with one
warning, recomputed and rewritten.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from ..utils import atomic_write
from .layer import fingerprint, product_fingerprint
from .svd import Triplets
from .threads import map_single_threaded

logger = logging.getLogger(__name__)

__all__ = ["CACHE_ENV", "DecompositionCache", "default_cache_dir"]

CACHE_ENV = "SOMA_CACHE_DIR"
VERSION = 2
RTOL = 1e-9


def default_cache_dir() -> Path:
    """``$SOMA_CACHE_DIR``, else ``$XDG_CACHE_HOME/soma_d2``, else ``~/.cache/soma_d2``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "soma_d2"


def _tensor_bytes(w: torch.Tensor) -> memoryview:
    flat = w.detach().to("cpu").contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy())


def _close(a: Sequence[float], b: Sequence[float]) -> bool:
    scale = max(abs(float(a[0])), abs(float(b[0])), 1e-300)
    return len(a) == len(b) and all(abs(x - y) <= RTOL * scale for x, y in zip(a, b))


class DecompositionCache:
    """Look up, verify and store the triplets of one batch of matrices (see the module docstring).

    ``directory`` defaults to :func:`default_cache_dir` (read when the cache is used, so the
    environment variable can be set late, e.g. by a test).
    """

    def __init__(self, directory: str | os.PathLike | None = None) -> None:
        self._directory = None if directory is None else Path(directory)
        self.hits = 0
        self.misses = 0

    @property
    def directory(self) -> Path:
        return self._directory if self._directory is not None else default_cache_dir()

    def key(self, names: Sequence[str], weights: Sequence[torch.Tensor], ranks: Sequence[int],
            which: str, method: str) -> str:
        """Hex SHA-256 over format version, mode, method, and (name, rank, shape, dtype, bytes).

        Each matrix's bytes are hashed on their own (in a thread pool: hashlib releases the GIL,
        so the hundreds of MB of a ViT-L target set hash on every core) and the key is the
        digest of the header and those per-matrix digests, in order.
        """
        devices = sorted({w.device.type for w in weights})
        digest = hashlib.sha256(json.dumps([VERSION, which, method, devices]).encode())
        with ThreadPoolExecutor(max_workers=min(len(weights), os.cpu_count() or 1) or 1) as pool:
            parts = list(pool.map(lambda w: hashlib.sha256(_tensor_bytes(w)).digest(), weights))
        for name, w, r, part in zip(names, weights, ranks, parts, strict=True):
            digest.update(json.dumps([name, int(r), list(w.shape), str(w.dtype)]).encode())
            digest.update(part)
        return digest.hexdigest()

    def path(self, key: str) -> Path:
        return self.directory / f"decomposition-{key[:40]}.safetensors"

    def decompose(self, names: Sequence[str], weights: Sequence[torch.Tensor],
                  ranks: Sequence[int], which: str, method: str,
                  compute: Callable[[], list[Triplets]]) -> list[Triplets]:
        """Triplets from a verified entry, or ``compute()`` stored as a new entry."""
        key = self.key(names, weights, ranks, which, method)
        path = self.path(key)
        if path.is_file():
            try:
                found = self._read(path, key, weights, ranks)
            except Exception as e:  # noqa: BLE001 -- any unreadable entry is recomputed
                logger.warning("SoMA decomposition cache: ignoring entry %s (%s); recomputing",
                               path, e)
            else:
                self.hits += 1
                logger.info("SoMA decomposition cache hit: %s (%d matrices)", path, len(found))
                return found
        self.misses += 1
        triplets = compute()
        for t, base in zip(triplets, map_single_threaded(fingerprint, weights), strict=True):
            t.base = base  # stored in the entry, and spares each layer build its own pass
        try:
            self._write(path, key, names, triplets)
        except OSError as e:
            logger.warning("SoMA decomposition cache: could not write %s (%s)", path, e)
        return triplets

    def _read(self, path: Path, key: str, weights: Sequence[torch.Tensor],
              ranks: Sequence[int]) -> list[Triplets]:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("soma", "{}"))
            if meta.get("key") != key or meta.get("version") != VERSION:
                raise ValueError("key/version in the entry does not match its file name")
            if len(meta.get("base", [])) != len(weights):
                raise ValueError(f"{len(meta.get('base', []))} matrices stored, "
                                 f"{len(weights)} requested")
            stored = [tuple(f.get_tensor(f"{i}.{k}") for k in ("U", "S", "V"))
                      for i in range(len(weights))]

        def check(job: tuple) -> Triplets:
            i, w, r, (u, s, v) = job
            if tuple(u.shape) != (w.shape[0], r) or tuple(v.shape) != (w.shape[1], r):
                raise ValueError(f"matrix #{i}: stored factor shapes {tuple(u.shape)}, "
                                 f"{tuple(v.shape)} do not fit weight {tuple(w.shape)}")
            if not _close(product_fingerprint(u * s, v.mT, 1.0), meta["product"][i]):
                raise ValueError(f"matrix #{i}: the stored triplets fail their fingerprint "
                                 "(corrupted entry)")
            return Triplets(u.to(w.device), s.to(w.device), v.to(w.device),
                            base=[float(x) for x in meta["base"][i]])

        return map_single_threaded(check, [(i, w, r, t) for i, (w, r, t) in
                                           enumerate(zip(weights, ranks, stored, strict=True))])

    def _write(self, path: Path, key: str, names: Sequence[str],
               triplets: Sequence[Triplets]) -> None:
        from safetensors.torch import save

        tensors = {}
        for i, t in enumerate(triplets):
            for k, value in (("U", t.U), ("S", t.S), ("V", t.V)):
                tensors[f"{i}.{k}"] = value.detach().to("cpu", torch.float64).contiguous()
        meta = {
            "version": VERSION, "key": key, "names": list(names),
            "base": [t.base for t in triplets],
            "product": map_single_threaded(
                lambda t: product_fingerprint(t.U * t.S, t.V.mT, 1.0), triplets),
        }
        blob = save(tensors, metadata={"soma": json.dumps(meta)})
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(str(path), "wb", lambda f: f.write(blob))
