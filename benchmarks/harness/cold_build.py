"""Benchmark: building a ViT-L SoMA backbone in a fresh process, first build vs second build.

What a user waits for when a run starts: the interpreter, the imports, the ViT, reading and
converting the pretrained file, the SoMA decomposition and the layer build. The first build of a
config decomposes (and fills the decomposition cache under ``SOMA_CACHE_DIR``); every later build
of the same config in a new process reads the cache. Both are timed end to end from outside (the
parent starts ``python -m benchmarks.harness.cold_build`` and waits for it), interleaved, each
in a fresh process with a fresh cache directory for the first build; the child also reports its
own phases (imports, weight load, build) so the remaining costs are visible.

The backbone is the project's real path, ``soma_d2.modeling.backbone.build_soma_vit`` on
``configs/Base-SoMA-DINOv2.yaml`` (ViT-L/16 at 1024, r=16, blocks 8-23: 96 target matrices),
from an official-layout ``dinov2_vitl14``-shaped file whose target matrices have the
pretrained-like spectrum of the decomposition benchmark (:func:`.svd.realistic_weights`).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BASE_CONFIG = os.path.join(REPO, "configs", "Base-SoMA-DINOv2.yaml")

__all__ = ["cold_build_table", "make_weight_file", "run_cold_build_benchmark"]


def make_weight_file(path: str, arch: str = "vit_l", seed: int = 0) -> None:
    """An official-layout DINOv2 ``<arch>/14`` file at 518 px (fused qkv), float32; the linear
    weights of every block get the realistic spectrum of the decomposition benchmark."""
    import torch

    from soma_d2.modeling.vit import build_dinov2_vit
    from soma_d2.pretrain.official_layout import to_official_state_dict

    from .svd import realistic_weights

    vit = build_dinov2_vit(arch, patch_size=14, img_size=518)
    state = vit.state_dict()
    names = [k for k in state if k.startswith("blocks.") and k.endswith(".weight")
             and state[k].dim() == 2]
    for name, w in zip(names, realistic_weights([tuple(state[n].shape) for n in names], seed=seed),
                       strict=True):
        state[name] = w
    torch.save(to_official_state_dict(state), path)


def _child(path: str, weights: str, output: str, opts: list[str]) -> None:
    """One build in this (fresh) process; phase times to ``output``.

    ``path`` "detectron2": the real backbone builder (imports Detectron2 and the registered
    projects through ``soma_d2.config``). "torch": the framework-free core only (``soma_d2.soma``
    and the DINOv2 weight loader, no Detectron2): the file's block linears in a module tree of
    ``nn.Linear`` (ViT-L's target layers, no attention code), then ``inject_soma`` with the cache.
    """
    import time as _time

    t0 = _time.perf_counter()
    if path == "detectron2":
        from soma_d2.config import build_cfg
        from soma_d2.modeling.backbone import build_soma_vit
        from soma_d2.utils.startup import freeze_startup_objects

        t_import = _time.perf_counter()
        cfg = build_cfg(BASE_CONFIG, ["MODEL.DEVICE", "cpu", "MODEL.SOMA.PRETRAINED", weights,
                                      *opts])
        freeze_startup_objects()  # as tools/train_net.py does between its config and its model
        layers = len(build_soma_vit(cfg).soma_report.layers)
        t_load = t_import
    else:
        import torch
        from torch import nn

        from soma_d2.checkpoint.dinov2 import load_dinov2_weights
        from soma_d2.soma import DecompositionCache, SoMAConfig, inject_soma

        t_import = _time.perf_counter()
        state = load_dinov2_weights(weights, patch_size=16, image_size=1024)
        t_load = _time.perf_counter()
        tree = nn.Module()
        for key, w in state.items():
            if not (key.startswith("blocks.") and key.endswith(".weight") and w.dim() == 2):
                continue
            parent = tree
            *stems, leaf, _ = key.split(".")
            for stem in stems:
                if not hasattr(parent, stem):
                    parent.add_module(stem, nn.Module())
                parent = getattr(parent, stem)
            with torch.device("meta"):
                layer = nn.Linear(w.shape[1], w.shape[0])
            layer.weight = nn.Parameter(w)
            layer.bias = nn.Parameter(state[key[:-len("weight")] + "bias"])
            parent.add_module(leaf, layer)
        config = SoMAConfig(rank=16, alpha=16.0, start_block=8,
                            target_modules=["attn.q", "attn.k", "attn.v", "attn.proj",
                                            "mlp.fc1", "mlp.fc2"])
        layers = len(inject_soma(tree, config, cache=DecompositionCache()).layers)
    t_build = _time.perf_counter()
    with open(output, "w") as f:
        json.dump({"imports_s": t_import - t0, "load_s": t_load - t_import,
                   "build_s": t_build - t_load, "layers": layers}, f)


def _run_child(path: str, weights: str, cache_dir: str, opts: list[str]) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    env = {**os.environ, "SOMA_CACHE_DIR": cache_dir}
    env["PYTHONPATH"] = os.pathsep.join([REPO, env.get("PYTHONPATH", "")])
    start = time.perf_counter()
    # the file itself, not `-m benchmarks.harness...`: the harness package would import every
    # benchmark (Detectron2, torchvision, ...) into the measured process
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", "--path", path,
                           "--weights", weights, "--output", out, *opts], cwd=REPO, env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"cold-build child failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    with open(out) as f:
        phases = json.load(f)
    os.remove(out)
    return {"wall_s": wall, **phases}


PATHS = {"detectron2": "Detectron2 backbone builder (build_soma_vit)",
         "torch": "framework-free core (soma_d2.soma, no Detectron2)"}


def run_cold_build_benchmark(repeats: int = 3, work_dir: str | None = None,
                             paths: tuple[str, ...] = tuple(PATHS), arch: str = "vit_l",
                             progress: Callable[[str], None] | None = None) -> dict:
    """First build (empty cache) vs second build (filled cache), each in a new process, for each
    of ``paths``; the four kinds of process interleaved ``repeats`` times. Returns the result
    record (see :mod:`.report`); ``arch`` other than vit_l is for the smoke test."""
    from .measure import paired_ratio, summarize
    from .report import goal, make_result

    say = progress or (lambda _m: None)
    tmp = tempfile.TemporaryDirectory(prefix="soma_cold_build_")
    root = work_dir or tmp.name
    weights = os.path.join(root, f"dinov2_{arch}14_like.pth")
    start = time.perf_counter()
    if not os.path.exists(weights):
        make_weight_file(weights, arch)
    gen_seconds = time.perf_counter() - start
    opts = ["MODEL.VIT.ARCH", arch] + ([] if arch == "vit_l" else ["MODEL.VIT.OUT_INDICES", "[3]"])
    runs: dict[tuple[str, str], list[dict]] = {(p, k): [] for p in paths
                                                for k in ("first", "second")}
    with tmp:
        for k in range(repeats):
            for path in paths:
                cache = tempfile.mkdtemp(prefix="cache_", dir=root)
                for kind in ("first", "second"):
                    runs[path, kind].append(_run_child(path, weights, cache, opts))
                    say(f"cold build {k + 1}/{repeats} {path}: {kind} "
                        f"{runs[path, kind][-1]['wall_s']:.2f} s")
    rows = []
    result = make_result("cold_build", "SoMA backbone built in a new process: first build "
                         "vs second build (decomposition cache hit)", {}, f"{paths[0]}_first", "s", False,
                         rows)
    for path in paths:
        base = [r["wall_s"] for r in runs[path, "first"]]
        for kind, what in (("first", "first build (decomposes, fills the cache)"),
                           ("second", "second build, new process (cache hit)")):
            samples = runs[path, kind]
            row = {"method": f"{path}_{kind}", "label": f"{PATHS[path]}: {what}",
                   "stats": summarize([r["wall_s"] for r in samples]),
                   **paired_ratio([r["wall_s"] for r in samples], base),
                   **{phase: summarize([r[phase] for r in samples])["median"]
                      for phase in ("imports_s", "load_s", "build_s")}}
            row["speedup"] = 1.0 / row["ratio"]
            rows.append(row)
        first, second = rows[-2]["stats"]["median"], rows[-1]["stats"]["median"]
        result["goals"].append(goal(f"{path}: second build speed-up vs first, end to end "
                                    "(median ratio)", first / second, ">=", 4.0))
    result["settings"] = {"config": os.path.relpath(BASE_CONFIG, REPO), "arch": arch,
                          "patch": 16, "image_size": 1024, "rank": 16,
                          "layers": runs[paths[0], "first"][0]["layers"], "repeats": repeats,
                          "weights_generated_s": gen_seconds}
    result["notes"].append(
        "wall time of the whole child process (interpreter start, imports, reading and "
        "converting the pretrained file, the ViT on the meta device or the module tree, "
        "decomposition or cache read, layer build, exit); imports / load / build are the "
        "child's own phase medians (the detectron2 path loads inside its build).")
    return result


def cold_build_table(result: dict) -> str:
    """The cold-build benchmark as a markdown table with goals and notes."""
    from .report import fmt_ratio, fmt_stats, render

    headers = ["build", "wall s, median [min-max]", "time vs first", "speed-up",
               "imports s", "load s", "build s"]
    cells = [[r["label"], fmt_stats(r["stats"]), fmt_ratio(r), f"{r['speedup']:.2f}x",
              f"{r['imports_s']:.2f}", f"{r['load_s']:.2f}", f"{r['build_s']:.2f}"]
             for r in result["rows"]]
    return render(result, headers, cells)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--child", action="store_true", help="(internal) one build, then exit")
    parser.add_argument("--path", choices=tuple(PATHS), default="detectron2")
    parser.add_argument("--weights", default="")
    parser.add_argument("--output", default="")
    parser.add_argument("opts", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.child:
        _child(args.path, args.weights, args.output, args.opts)
        return
    print(cold_build_table(run_cold_build_benchmark(progress=print)))


if __name__ == "__main__":
    main()
