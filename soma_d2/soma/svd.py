"""Batched partial SVD: the r smallest (or largest) singular triplets of many weight matrices.

SoMA needs only r triplets per layer, yet a full ``torch.linalg.svd`` per layer dominates model
construction (about 32 s for a ViT-L target set on 2 CPU cores). Here matrices are grouped by shape,
the float64 Gram matrix of the smaller side is formed, and only the wanted eigenpairs are computed
(BLAS ``dsyrk`` + LAPACK's subset solver ``dsyevr`` through scipy on CPU; one batched
``torch.linalg.eigh`` per group on accelerators). A Rayleigh-Ritz step then takes the thin SVD
of ``W @ V_r`` (out x r), which gives orthonormal vectors on both sides and singular values
accurate to rounding of ``W`` itself, with no division by small singular values; the
reconstruction ``U_r diag(S_r) V_r^T`` equals ``W V_r V_r^T`` exactly. On CPU the matrices are
solved by one thread per core, each with single-threaded BLAS (OpenBLAS's per-thread setting):
the tridiagonalization is memory-bound and scales poorly across threads, and multi-threaded BLAS
spin-waits badly when other processes share the cores.
"""
from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from .threads import map_single_threaded

METHODS = ("auto", "eigh-scipy", "eigh-torch", "svd")
WHICH = ("minor", "principal")


@dataclass
class Triplets:
    """r singular triplets of one matrix in float64, singular values descending.

    ``U`` is out x r, ``S`` has r entries, ``V`` is in x r (right vectors as columns).
    ``base``, when known, is the fingerprint (:func:`.layer.fingerprint`) of the matrix they were
    taken from: a verified decomposition-cache entry stores it, so that a layer built from the
    entry need not recompute it (the entry's key hashes every byte of that matrix).
    """

    U: torch.Tensor
    S: torch.Tensor
    V: torch.Tensor
    base: list[float] | None = None

    def reconstruction(self) -> torch.Tensor:
        """``U diag(S) V^T``: the rank-r part of the matrix these triplets span."""
        return (self.U * self.S) @ self.V.mT


def _scipy_available() -> bool:
    try:
        import scipy.linalg  # noqa: F401
    except ImportError:
        return False
    return True


def _check_inputs(weights: Sequence[torch.Tensor], ranks: Sequence[int], which: str,
                  method: str) -> None:
    if which not in WHICH:
        raise ValueError(f"decompose_weights: which must be one of {WHICH}, got {which!r}")
    if method not in METHODS:
        raise ValueError(f"decompose_weights: method must be one of {METHODS}, got {method!r}")
    if len(ranks) != len(weights):
        raise ValueError(
            f"decompose_weights: got {len(ranks)} ranks for {len(weights)} weight matrices"
        )
    for i, (w, r) in enumerate(zip(weights, ranks, strict=True)):
        if not isinstance(w, torch.Tensor) or w.dim() != 2:
            raise ValueError(f"decompose_weights: weight #{i} must be a 2-D tensor")
        if not w.is_floating_point():
            raise TypeError(
                f"decompose_weights: weight #{i} has dtype {w.dtype}; a floating dtype is needed"
            )
        if isinstance(r, bool) or not isinstance(r, int) or not 1 <= r <= min(w.shape):
            raise ValueError(
                f"decompose_weights: rank of weight #{i} (shape {tuple(w.shape)}) must be an int "
                f"in [1, {min(w.shape)}], got {r!r}"
            )


def _check_finite(weights: Sequence[torch.Tensor]) -> None:
    """NaN/inf propagate into the sum: one float64 pass per matrix, on parallel workers with
    torch single-threaded (see `.threads`: torch's own barriers stall on a loaded machine)."""
    finite = map_single_threaded(
        lambda w: bool(torch.isfinite(w.detach().sum(dtype=torch.float64))), weights)
    for i, ok in enumerate(finite):
        if not ok:
            raise ValueError(f"decompose_weights: weight #{i} contains NaN or inf")


def _svd_reference(w: torch.Tensor, rank: int, which: str) -> Triplets:
    u, s, vh = torch.linalg.svd(w.detach().double(), full_matrices=False)
    sl = slice(0, rank) if which == "principal" else slice(s.numel() - rank, s.numel())
    return Triplets(u[:, sl], s[sl], vh[sl].mT)


def _rayleigh_ritz(w64: torch.Tensor, side: torch.Tensor, tall: bool) -> Triplets:
    """Triplets from an orthonormal basis of the wanted right (tall) or left (wide) subspace:
    thin SVD of ``W V_r`` (or ``W^T U_r``), r columns only."""
    proj = w64 @ side if tall else w64.mT @ side
    left, s, qh = torch.linalg.svd(proj, full_matrices=False)
    rotated = side @ qh.mT
    return Triplets(left, s, rotated) if tall else Triplets(rotated, s, left)


_LOCAL_THREADS: list = []


def _openblas_local_threads():  # noqa: ANN202 -- a ctypes function or None
    """scipy's bundled OpenBLAS ``openblas_set_num_threads_local`` (threads of the CALLING thread
    only, returns the previous value), or None where this scipy build has no such library."""
    if not _LOCAL_THREADS:
        import ctypes
        import glob
        import os

        import scipy

        found = None
        libs = os.path.join(os.path.dirname(os.path.dirname(scipy.__file__)), "scipy.libs")
        for path in sorted(glob.glob(os.path.join(libs, "*openblas*.so*"))):
            try:
                fn = getattr(ctypes.CDLL(path), "openblas_set_num_threads_local", None)
            except OSError:
                continue
            if fn is not None:
                fn.argtypes, fn.restype = [ctypes.c_int], ctypes.c_int
                found = fn
                break
        _LOCAL_THREADS.append(found)
    return _LOCAL_THREADS[0]


def _decompose_scipy(mats: list[torch.Tensor], tall: bool, lo: int, hi: int,
                     workers: int) -> list[Triplets]:
    """Per matrix: BLAS ``dsyrk`` for the Gram matrix (one triangle, half the flops of a matmul)
    and LAPACK's subset solver ``dsyevr`` (only eigenpairs ``lo..hi``), then Rayleigh-Ritz, all
    in scipy's BLAS/LAPACK on arrays viewed in Fortran order (no copies of W beyond float64).

    With ``workers`` threads each solves whole matrices with ``torch.get_num_threads() //
    workers`` BLAS threads of its own (OpenBLAS's per-thread setting): independent single-threaded
    solves use the cores better than one multi-threaded tridiagonalization (memory-bound), and
    they do not spin-wait for each other when other processes load the machine.
    """
    import numpy as np
    import scipy.linalg
    from scipy.linalg.blas import dgemm, dsyrk

    set_local = _openblas_local_threads()
    blas_threads = max(1, torch.get_num_threads() // workers)
    buffers: dict[int, np.ndarray] = {}

    def solve(w: torch.Tensor) -> Triplets:
        previous = set_local(blas_threads) if set_local is not None else None
        try:
            src = w.detach().cpu()
            if src.dtype not in (torch.float32, torch.float64):
                src = src.double()
            # W in float64, in a buffer this thread reuses for every matrix of the group: a
            # fresh 32 MB array per matrix costs its page faults again (slow on a loaded machine)
            w64 = buffers.get(threading.get_ident())
            if w64 is None or w64.shape != tuple(src.shape):
                w64 = buffers[threading.get_ident()] = np.empty(tuple(src.shape), np.float64)
            np.copyto(w64, src.numpy())
            # W is C-contiguous, so W.T is a Fortran view: dsyrk(trans=0) gives W^T W, 1 W W^T.
            gram = dsyrk(1.0, w64.T, trans=0 if tall else 1)
            side = scipy.linalg.eigh(gram, lower=False, subset_by_index=[lo, hi], driver="evr",
                                     check_finite=False, overwrite_a=True)[1]
            del gram
            # Rayleigh-Ritz: thin SVD of W V_r (tall) or W^T U_r (wide), r columns only
            proj_t = dgemm(1.0, side, w64.T, trans_a=1, trans_b=0 if tall else 1)
            left, s, qh = scipy.linalg.svd(proj_t.T, full_matrices=False, check_finite=False)
            rotated = side @ qh.T
        finally:
            if previous is not None:
                set_local(previous)
        u, v = (left, rotated) if tall else (rotated, left)
        dev = w.device
        return Triplets(torch.from_numpy(np.ascontiguousarray(u)).to(dev),
                        torch.from_numpy(np.ascontiguousarray(s)).to(dev),
                        torch.from_numpy(np.ascontiguousarray(v)).to(dev))

    if workers > 1 and len(mats) > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(solve, mats))
    return [solve(w) for w in mats]


def _decompose_torch(mats: list[torch.Tensor], tall: bool, lo: int, hi: int) -> list[Triplets]:
    """One batched ``torch.linalg.eigh`` of the stacked Gram matrices (any device)."""
    grams = []
    for w in mats:
        w64 = w.detach().double()
        grams.append(w64.mT @ w64 if tall else w64 @ w64.mT)
    sides = torch.linalg.eigh(torch.stack(grams))[1][..., lo:hi + 1]
    del grams
    return [_rayleigh_ritz(w.detach().double(), side, tall)
            for w, side in zip(mats, sides.unbind(0), strict=True)]


def _decompose_group(mats: list[torch.Tensor], rank: int, which: str, method: str,
                     workers: int) -> list[Triplets]:
    out_f, in_f = mats[0].shape
    tall = out_f >= in_f
    n = min(out_f, in_f)
    lo, hi = (0, rank - 1) if which == "minor" else (n - rank, n - 1)
    if method == "eigh-scipy":
        return _decompose_scipy(mats, tall, lo, hi, workers)
    return _decompose_torch(mats, tall, lo, hi)


def decompose_weights(
    weights: Sequence[torch.Tensor],
    ranks: int | Sequence[int],
    which: str = "minor",
    method: str = "auto",
    workers: int | None = None,
    max_batch: int = 32,
) -> list[Triplets]:
    """r smallest (``which="minor"``) or largest (``"principal"``) singular triplets of each weight.

    Matrices are grouped by (shape, device, rank) and decomposed together on their own device.
    ``method``: ``"eigh-scipy"`` (CPU subset eigensolver, the CPU default of ``"auto"``),
    ``"eigh-torch"`` (batched ``torch.linalg.eigh`` of the Gram matrices, the default off CPU or
    without scipy) or ``"svd"`` (full float64 ``torch.linalg.svd`` per matrix, the reference).
    ``workers`` threads solve the eigenproblems of a group in parallel on CPU, each with
    ``torch.get_num_threads() // workers`` BLAS threads of its own (default None: one worker per
    torch thread, each single-threaded, where scipy's OpenBLAS allows per-thread settings; else
    1 worker with multi-threaded BLAS); ``max_batch``
    bounds how many Gram matrices are stacked at once for the batched torch solver (memory).
    Results come back in input order as float64 :class:`Triplets` on each weight's device.
    """
    weights = list(weights)
    rank_list = [ranks] * len(weights) if isinstance(ranks, int) else list(ranks)
    _check_inputs(weights, rank_list, which, method)
    _check_finite(weights)
    if workers is None:
        per_thread = _scipy_available() and _openblas_local_threads() is not None
        workers = max(1, torch.get_num_threads()) if per_thread else 1
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"decompose_weights: workers must be an int >= 1, got {workers!r}")
    results: list[Triplets | None] = [None] * len(weights)
    if method == "svd":
        for i, (w, r) in enumerate(zip(weights, rank_list, strict=True)):
            results[i] = _svd_reference(w, r, which)
        return results  # type: ignore[return-value]
    groups: dict[tuple, list[int]] = {}
    for i, (w, r) in enumerate(zip(weights, rank_list, strict=True)):
        groups.setdefault((tuple(w.shape), w.device, r), []).append(i)
    with torch.no_grad():
        for (_, device, rank), idx in groups.items():
            chosen = method
            if method == "auto":
                use_scipy = device.type == "cpu" and _scipy_available()
                chosen = "eigh-scipy" if use_scipy else "eigh-torch"
            for start in range(0, len(idx), max_batch):
                part = idx[start:start + max_batch]
                trips = _decompose_group([weights[i] for i in part], rank, which, chosen,
                                         workers)
                for i, trip in zip(part, trips, strict=True):
                    results[i] = trip
    return results  # type: ignore[return-value]
