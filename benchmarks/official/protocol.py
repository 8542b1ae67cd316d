"""The two-process protocol shared by the official half and the soma-d2 half of a comparison.

The official half (side venv: mmdet/mmseg/mmengine/mmcv-lite) builds the official model from the
official checkout with random weights, runs it on fixed inputs, records per-stage outputs with
forward hooks (:class:`Recorder`) and saves a *bundle* (:func:`save_bundle`): the state dict, the
inputs, the recorded outputs (tensors, or nested lists / dicts of them) and a ``meta`` dict of
plain values. The soma-d2 half (project venv) loads it with ``weights_only=True``
(:func:`load_bundle`), converts the state dict with ``tools/convert_official.py``'s functions,
runs ours on the same inputs and compares stage by stage (:func:`compare_stage`), writing JSON
and markdown (:func:`write_results`). This module needs only torch and the standard library, so
both environments import it.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

__all__ = ["Recorder", "compare_stage", "install_standins", "interleaved_timing", "load_bundle",
           "save_bundle", "summarise", "write_results"]

HERE = os.path.dirname(os.path.abspath(__file__))


def install_standins() -> None:
    """Put the ``mmcv._ext`` and ``peft`` stand-ins in place (official half, before imports)."""
    if HERE not in sys.path:
        sys.path.insert(0, HERE)
    import mmcv_ext_standin
    import peft_standin

    mmcv_ext_standin.install()
    peft_standin.install()


def _plain(obj: Any) -> Any:
    """Detach tensors to contiguous CPU copies; lists/tuples/dicts recursively."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().contiguous().clone()
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store a {type(obj).__name__} in a bundle")


class Recorder:
    """Forward hooks that store a module's output (through ``pick``) under a stage name."""

    def __init__(self) -> None:
        self.outputs: dict[str, Any] = {}
        self._handles: list = []
        self.restore: list[Callable[[], None]] = []  # undo method wrappers on remove()

    def hook(self, module: torch.nn.Module, name: str,
             pick: Callable[[Any, Any], Any] | None = None, inputs: bool = False) -> None:
        """Record ``pick(args, output)`` (default: the output, or the positional args with
        ``inputs``) every call; repeated calls store a list in call order."""
        def fn(mod, args, kwargs, output):
            value = pick(args, kwargs, output) if pick else (list(args) if inputs else output)
            value = _plain(value)
            if name in self.outputs:
                prev = self.outputs[name]
                self.outputs[name] = (prev if isinstance(prev, _Calls) else _Calls([prev]))
                self.outputs[name].append(value)
            else:
                self.outputs[name] = value
        self._handles.append(module.register_forward_hook(fn, with_kwargs=True))

    def put(self, name: str, value: Any) -> None:
        self.outputs[name] = _plain(value)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        for undo in self.restore:
            undo()
        self.restore.clear()

    def finished(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, _Calls) else v) for k, v in self.outputs.items()}


class _Calls(list):
    """Outputs of repeated calls of one hooked module."""


def save_bundle(path: str, state_dict: Mapping[str, torch.Tensor], inputs: Any,
                outputs: Mapping[str, Any], meta: Mapping[str, Any]) -> None:
    """Write the official half's bundle (plain containers of tensors only)."""
    bundle = {"state_dict": {k: v.detach().cpu().clone() for k, v in state_dict.items()},
              "inputs": _plain(inputs), "outputs": _plain(dict(outputs)),
              "meta": json.loads(json.dumps(dict(meta)))}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    torch.save(bundle, path)


def load_bundle(path: str) -> dict[str, Any]:
    """Read a bundle without unpickling anything but tensors and containers."""
    return torch.load(path, map_location="cpu", weights_only=True)


def _flatten(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, Mapping):
        return [t for k in sorted(obj) for t in _flatten(obj[k])]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in _flatten(v)]
    return []


def compare_stage(name: str, ours: Any, official: Any, note: str = "") -> dict[str, Any]:
    """Max abs difference, the reference's max magnitude, and their ratio (``max_rel``: the
    largest difference relative to the stage's scale, so that values near zero do not blow it
    up) over all tensors of a stage; shapes must agree."""
    a, b = _flatten(ours), _flatten(official)
    if len(a) != len(b):
        raise ValueError(f"stage {name}: {len(a)} tensors here vs {len(b)} in the official run")
    max_abs, scale, count = 0.0, 0.0, 0
    for x, y in zip(a, b):
        if tuple(x.shape) != tuple(y.shape):
            raise ValueError(f"stage {name}: shape {tuple(x.shape)} vs official "
                             f"{tuple(y.shape)}")
        if x.numel() == 0:
            continue
        x64, y64 = x.double(), y.double()
        if x.dtype == torch.bool or not x.is_floating_point():
            diff = float((x64 != y64).double().max())
        else:
            diff = float((x64 - y64).abs().max())
        max_abs = max(max_abs, diff)
        scale = max(scale, float(y64.abs().max()))
        count += x.numel()
    rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else math.inf)
    row = {"stage": name, "max_abs": max_abs, "ref_max": scale, "max_rel": rel,
           "elements": count}
    if note:
        row["note"] = note
    return row


def serve_commands(handlers: Mapping[str, Callable[[], Any]]) -> None:
    """Timing worker loop shared by both halves: say ready, then run one handler per stdin line
    (``quit`` ends) and answer one JSON line with its seconds, so the driver can interleave the
    official and the soma-d2 process command by command."""
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "quit":
            break
        if cmd not in handlers:
            raise ValueError(f"unknown command {cmd!r}; known: {sorted(handlers)}")
        start = time.perf_counter()
        handlers[cmd]()
        print(json.dumps({"cmd": cmd, "seconds": time.perf_counter() - start}), flush=True)


def interleaved_timing(fns: Mapping[str, Callable[[], Any]], repeats: int, warmup: int = 1
                       ) -> dict[str, list[float]]:
    """Wall-clock seconds of each callable, interleaved (A B A B ...) after ``warmup`` rounds,
    so that load from other processes affects both sides alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return times


def summarise(rows: Iterable[Mapping[str, Any]], tol: float = 1e-4) -> str:
    """A markdown table of the comparison rows."""
    lines = ["| stage | max abs diff | max rel diff | ref max | elements | note |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        flag = "" if r["max_rel"] <= tol else " **(above float32 rounding)**"
        lines.append(f"| {r['stage']} | {r['max_abs']:.3g} | {r['max_rel']:.3g}{flag} | "
                     f"{r['ref_max']:.3g} | {r['elements']} | {r.get('note', '')} |")
    return "\n".join(lines)


def write_results(path_stem: str, results: Mapping[str, Any], markdown: str) -> None:
    """``<stem>.json`` and ``<stem>.md``."""
    with open(path_stem + ".json", "w") as f:
        json.dump(results, f, indent=1, sort_keys=False)
        f.write("\n")
    with open(path_stem + ".md", "w") as f:
        f.write(markdown.rstrip() + "\n")
