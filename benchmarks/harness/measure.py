"""Measuring primitives shared by the benchmarks: interleaved repetitions, robust statistics,
peak memory of an isolated process, and a description of the machine.

A shared 2-core machine drifts by tens of percent within a minute, so absolute times mean little;
a method is only ever compared with its baseline measured in the same process, repetition by
repetition in turn (A B C A B C ...), so that a load change hits every method alike. Results are
summarised by the median and the spread (min/max and inter-quartile range), and ratios are given
both as a ratio of medians and as the range of the per-repetition (paired) ratios.
"""
from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import torch

__all__ = [
    "MemoryProbe",
    "Timer",
    "machine_info",
    "measure_step_memory",
    "method_rows",
    "paired_ratio",
    "run_interleaved",
    "run_isolated",
    "summarize",
    "sync",
]

MiB = float(1 << 20)


def sync(device: torch.device | str) -> None:
    """Wait for queued kernels of ``device`` (no-op on CPU), so that a timer sees finished work."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Timer:
    """Context manager measuring wall time of a block, synchronising ``device`` on both ends."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.seconds = float("nan")

    def __enter__(self) -> Timer:
        sync(self.device)
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        sync(self.device)
        self.seconds = time.perf_counter() - self._start


def summarize(samples: Sequence[float]) -> dict[str, Any]:
    """Median, min, max, quartiles and count of repeated measurements (plus the raw samples)."""
    values = [float(v) for v in samples]
    if not values:
        raise ValueError("summarize: no samples (repeats must be >= 1)")
    ordered = sorted(values)
    if len(ordered) >= 2:
        q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive")
    else:
        q1 = q3 = ordered[0]
    return {
        "median": statistics.median(ordered),
        "min": ordered[0],
        "max": ordered[-1],
        "q1": q1,
        "q3": q3,
        "n": len(ordered),
        "samples": values,
    }


def paired_ratio(values: Sequence[float], baseline: Sequence[float]) -> dict[str, float]:
    """``median(values) / median(baseline)`` and the min/max of the per-repetition ratios.

    Repetition i of a method ran right next to repetition i of its baseline, so the paired ratios
    show how stable the comparison is under the machine's drift.
    """
    if len(values) != len(baseline) or not values:
        raise ValueError(
            f"paired_ratio: need equally many samples, got {len(values)} and {len(baseline)}"
        )
    pairs = [v / b for v, b in zip(values, baseline)]
    return {
        "ratio": statistics.median(values) / statistics.median(baseline),
        "ratio_min": min(pairs),
        "ratio_max": max(pairs),
    }


def run_interleaved(
    cases: Mapping[str, Callable[[], float]],
    repeats: int,
    warmup: int = 1,
    progress: Callable[[str], None] | None = None,
    rotate: bool = True,
) -> dict[str, list[float]]:
    """Run each case ``warmup`` times untimed, then ``repeats`` rounds of all cases in turn.

    Rounds interleave the cases (A B C, A B C, ...); with ``rotate`` each round starts one case
    later (A B C, B C A, C A B, ...), so that no case always runs right after the same other one
    (allocator and cache state left behind by a big case would otherwise always hit the same
    next one). Every case callable performs one repetition and returns its own measurement
    (seconds per unit, or a throughput), so that it can exclude its setup; the samples are
    returned per case, in round order.
    """
    if not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be an int >= 1, got {repeats!r}")
    if not cases:
        raise ValueError("run_interleaved: no cases")
    for _ in range(warmup):
        for fn in cases.values():
            fn()
    samples: dict[str, list[float]] = {name: [] for name in cases}
    names = list(cases)
    for rep in range(repeats):
        shift = rep % len(names) if rotate else 0
        for name in names[shift:] + names[:shift]:
            samples[name].append(float(cases[name]()))
        if progress is not None:
            progress(f"repetition {rep + 1}/{repeats}: " + ", ".join(
                f"{n}={v[-1]:.4g}" for n, v in samples.items()))
    return samples


def _read_status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class MemoryProbe:
    """Resident memory of this process: current, and the peak since :meth:`reset_peak`.

    On Linux the kernel's high-water mark (``VmHWM``) is reset through ``/proc/self/clear_refs``,
    so a peak can be taken over the training steps alone, excluding model construction. Where
    that is unavailable the lifetime peak (``ru_maxrss``) is used and ``method`` says so.
    """

    def __init__(self) -> None:
        self.method = "VmHWM after clear_refs reset"
        if _read_status_kib("VmHWM") is None:
            self.method = "ru_maxrss (lifetime peak, includes model construction)"

    def current_bytes(self) -> int:
        kib = _read_status_kib("VmRSS")
        if kib is None:
            return self._maxrss_bytes()
        return kib * 1024

    @staticmethod
    def _maxrss_bytes() -> int:
        scale = 1 if sys.platform == "darwin" else 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale

    def reset_peak(self) -> None:
        """Return freed heap memory to the OS (glibc), then restart the peak at the current RSS."""
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass
        try:
            with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
                fh.write("5")
        except OSError:
            self.method = "ru_maxrss (lifetime peak, includes model construction)"

    def peak_bytes(self) -> int:
        kib = _read_status_kib("VmHWM")
        if kib is None or self.method.startswith("ru_maxrss"):
            return self._maxrss_bytes()
        return kib * 1024


def run_isolated(fn: Callable[..., Any], *args: Any, preload: Sequence[str] = ()) -> Any:
    """Run ``fn(*args)`` in a fresh child process and return its (picklable) result.

    Children are forked from a forkserver that has imported ``preload`` (torch, the benchmark
    module) but run no computation, so each starts with a clean heap in a fraction of a second
    and its peak memory belongs to that one measurement. ``fn`` must be a module-level function.
    A child that dies (e.g. killed for memory) raises ``RuntimeError`` instead of hanging, as a
    ``multiprocessing.Pool`` would while it waits for a replacement worker.
    """
    methods = mp.get_all_start_methods()
    ctx = mp.get_context("forkserver" if "forkserver" in methods else "spawn")
    if ctx.get_start_method() == "forkserver":
        ctx.set_forkserver_preload(["torch", *preload])
    with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        try:
            return pool.submit(fn, *args).result()
        except BrokenProcessPool as e:
            raise RuntimeError(f"the isolated child running {fn.__name__} died (killed, e.g. by "
                               "the out-of-memory killer?)") from e


def _step_memory_worker(make_case: Callable[[str], Any], steps: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    probe = MemoryProbe()
    before = probe.current_bytes()
    case = make_case("cpu")
    probe.reset_peak()
    for _ in range(steps):
        case.step()
    return {"peak_bytes": probe.peak_bytes() - before, "method_note": probe.method}


def measure_step_memory(make_case: Callable[[str], Any], steps: int, device: str,
                        preload: Sequence[str] = ()) -> dict:
    """Peak memory of building `make_case(device)` (an object with `step()`) and taking `steps`
    steps, counted from before it exists: in a fresh child process on CPU (resident set,
    `run_isolated` with `preload`; `make_case` must pickle, e.g. a `functools.partial` of a
    module-level class), `torch.cuda.max_memory_allocated` on a GPU. One procedure for every
    detector benchmark, so their memory columns mean the same thing."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return run_isolated(_step_memory_worker, make_case, steps, torch.get_num_threads(),
                            preload=preload)
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated(dev)
    case = make_case(device)
    torch.cuda.reset_peak_memory_stats(dev)
    for _ in range(steps):
        case.step()
    torch.cuda.synchronize(dev)
    peak = torch.cuda.max_memory_allocated(dev) - before
    del case
    torch.cuda.empty_cache()
    return {"peak_bytes": peak, "method_note": "torch.cuda.max_memory_allocated"}


def method_rows(methods: Sequence[str], labels: Mapping[str, str],
                samples: Mapping[str, Sequence[float]], memory: Mapping[str, dict],
                extra: Callable[[str], dict[str, Any]], baseline: str = "full"
                ) -> list[dict[str, Any]]:
    """One result row per method: time statistics, paired ratio to `baseline`, the benchmark's own
    `extra(method)` fields, peak memory (from `measure_step_memory`) and its ratio to the
    baseline's; the rows every detector training-step benchmark reports, built one way."""
    rows = [{"method": m, "label": labels[m], "stats": summarize(samples[m]),
             **paired_ratio(samples[m], samples[baseline]), **extra(m),
             "peak_mem_mib": memory[m]["peak_bytes"] / MiB} for m in methods]
    base_mib = rows[list(methods).index(baseline)]["peak_mem_mib"]
    for row in rows:
        row["mem_ratio"] = row["peak_mem_mib"] / base_mib
    return rows


def _lscpu_head(lines: int = 10) -> list[str]:
    exe = shutil.which("lscpu")
    if exe is None:
        return []
    try:
        out = subprocess.run([exe], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return []
    return out.stdout.splitlines()[:lines]


def machine_info(device: torch.device | str = "cpu") -> dict[str, Any]:
    """What the numbers were measured on: cores, CPU, torch, threads, load average, GPU."""
    device = torch.device(device)
    info: dict[str, Any] = {
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "lscpu_head": _lscpu_head(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "thread_env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                                  "OPENBLAS_NUM_THREADS") if k in os.environ},
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "time": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }
    if device.type == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(device)
    return info
