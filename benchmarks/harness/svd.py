"""Benchmark 1: decomposing every targeted weight of a ViT, soma-d2 vs the official per-layer loop.

The official release decomposes each targeted linear layer with a full float32
``torch.linalg.svd`` in turn; soma-d2's :func:`~soma_d2.soma.inject_soma` decomposes them all in
one batched call that computes only the r wanted triplets. Both start from the same weights --
random, but with a spectrum shaped like pretrained ones (power-law decay and a few outlier
directions), because Gaussian matrices have a flat, easy spectrum -- and both produce the frozen
residual and the factors. Speed is the ratio of the two; accuracy is checked two ways: how well
``W_res + s B A`` rebuilds ``W`` (every layer), and how close ``s B A`` is to the minor rank-r part
given by a float64 ``torch.linalg.svd`` (the layers of one block: the reference is slow).
"""
from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from soma_d2.soma import (
    DecompositionCache,
    SoMAConfig,
    SoMALinear,
    decompose_weights,
    inject_soma,
)

from .measure import Timer, paired_ratio, run_interleaved, summarize
from .report import fmt_num, fmt_ratio, fmt_stats, goal, make_result, render

__all__ = [
    "SVD_PRESETS",
    "SVDSpec",
    "official_svd_loop",
    "realistic_weights",
    "run_svd_benchmark",
    "svd_table",
]

TARGETS = ("attn.q", "attn.k", "attn.v", "attn.proj", "mlp.fc1", "mlp.fc2")


@dataclass(frozen=True)
class SVDSpec:
    """Target set of a ViT: width, FFN width, depth, first adapted block and adapter rank."""

    dim: int
    hidden: int
    depth: int
    start_block: int
    rank: int

    def layer_shapes(self) -> list[tuple[str, tuple[int, int]]]:
        """(module name, (out, in)) of every targeted linear layer, in model order."""
        shapes = {"attn.q": (self.dim, self.dim), "attn.k": (self.dim, self.dim),
                  "attn.v": (self.dim, self.dim), "attn.proj": (self.dim, self.dim),
                  "mlp.fc1": (self.hidden, self.dim), "mlp.fc2": (self.dim, self.hidden)}
        return [(f"blocks.{b}.{t}", shapes[t])
                for b in range(self.start_block, self.depth) for t in TARGETS]


# T: smoke-test size. S: ViT-B targets (blocks 4-11). B and L: the ViT-L target set
# (blocks 8-23; q, k, v, proj 1024x1024, fc1 4096x1024, fc2 1024x4096), rank 16.
SVD_PRESETS = {
    "T": SVDSpec(dim=32, hidden=128, depth=3, start_block=1, rank=4),
    "S": SVDSpec(dim=768, hidden=3072, depth=12, start_block=4, rank=16),
    "B": SVDSpec(dim=1024, hidden=4096, depth=24, start_block=8, rank=16),
    "L": SVDSpec(dim=1024, hidden=4096, depth=24, start_block=8, rank=16),
}


def realistic_spectrum(n: int, out_f: int, in_f: int,
                       gen: torch.Generator | None = None) -> torch.Tensor:
    """Descending singular values: power law ``(1+i)^-0.5`` with the top 4 lifted x4 (condition
    number about 130 at n = 1024), each value jittered by up to +-10% when ``gen`` is given, and
    scaled to the Frobenius norm of a trunc-normal(0.02) weight of shape out x in."""
    s = (1.0 + torch.arange(n, dtype=torch.float64)) ** -0.5
    s[:4] *= 4.0
    if gen is not None:
        s = s * (1.0 + 0.1 * (2 * torch.rand(n, generator=gen, dtype=torch.float64) - 1))
        s = torch.sort(s, descending=True).values
    return s * (0.02 * (out_f * in_f) ** 0.5 / s.norm())


def realistic_weights(shapes: list[tuple[int, int]], seed: int = 0,
                      device: torch.device | str = "cpu", pool: int = 4) -> list[torch.Tensor]:
    """float32 ``U diag(s) V^T`` per shape: a jittered :func:`realistic_spectrum` and singular
    vectors drawn from ``pool`` Haar-random orthonormal bases per size (QR of Gaussians).

    Each matrix is a generic dense matrix with exactly that spectrum; sharing bases between
    layers only saves generation time (a ViT-L target set needs 8 QRs instead of 192).
    """
    gen = torch.Generator().manual_seed(seed)
    bases: dict[tuple[int, int], list[torch.Tensor]] = {}

    def basis(rows: int, cols: int) -> torch.Tensor:
        found = bases.setdefault((rows, cols), [])
        pick = int(torch.randint(pool, (1,), generator=gen))
        while len(found) <= pick:
            found.append(torch.linalg.qr(torch.randn(rows, cols, generator=gen))[0])
        return found[pick]

    out = []
    for out_f, in_f in shapes:
        n = min(out_f, in_f)
        u, v = basis(out_f, n), basis(in_f, n)
        s = realistic_spectrum(n, out_f, in_f, gen).float()
        out.append(((u * s) @ v.T).contiguous().to(device))
    return out


def official_svd_loop(weights: list[torch.Tensor], rank: int,
                      scaling: float = 1.0) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The official release's per-layer decomposition: full float32 SVD of each W, the r smallest
    triplets as ``B = U_r sqrt(S_r/s)``, ``A = sqrt(S_r/s) V_r^T`` and ``W_res = W - s B A``.

    Returns ``(W_res, A, B)`` per weight, in the weight's dtype and device.
    """
    result = []
    for w in weights:
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        root = torch.sqrt(s[-rank:] / scaling)
        b = u[:, -rank:] * root
        a = root[:, None] * vh[-rank:]
        result.append((w - scaling * (b @ a), a, b))
    return result


class _Holder(nn.Module):
    """Bare module tree with the target layers' names (``blocks.<i>.attn.q`` ...), no copies."""

    def __init__(self, names: list[str], weights: list[torch.Tensor]) -> None:
        super().__init__()
        for name, w in zip(names, weights, strict=True):
            parent: nn.Module = self
            *path, leaf = name.split(".")
            for part in path:
                if not hasattr(parent, part):
                    parent.add_module(part, nn.Module())
                parent = getattr(parent, part)
            layer = nn.Linear(w.shape[1], w.shape[0], device="meta")
            layer.weight = nn.Parameter(w, requires_grad=False)
            layer.bias = nn.Parameter(torch.zeros(w.shape[0], device=w.device))
            parent.add_module(leaf, layer)


def soma_d2_decompose(names: list[str], weights: list[torch.Tensor], spec: SVDSpec,
                      cache: DecompositionCache | None = None
                      ) -> Callable[[], list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]:
    """A closure running soma-d2's real path, ``inject_soma`` on a module tree holding
    ``weights`` (with ``cache``, through the decomposition cache); returns ``(W_res, A, B)`` per
    layer. The tree is built before the call."""
    holder = _Holder(names, weights)
    config = SoMAConfig(rank=spec.rank, start_block=spec.start_block,
                        target_modules=list(TARGETS))

    def run() -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        inject_soma(holder, config, cache=cache)
        layers = [holder.get_submodule(n) for n in names]
        if not all(isinstance(m, SoMALinear) for m in layers):
            raise RuntimeError("svd benchmark: inject_soma did not replace every target layer")
        return [(m.weight.detach(), m.A.detach(), m.B.detach()) for m in layers]

    return run


def reconstruction_error(weights: list[torch.Tensor], parts: list[tuple], scaling: float = 1.0
                         ) -> float:
    """max over layers of ``max|W_res + s B A - W| / max|W|``, evaluated in float64."""
    worst = 0.0
    for w, (res, a, b) in zip(weights, parts, strict=True):
        w64 = w.double()
        rebuilt = res.double() + scaling * (b.double() @ a.double())
        worst = max(worst, float((rebuilt - w64).abs().max() / w64.abs().max()))
    return worst


def minor_part_error(references: list[torch.Tensor], parts: list[tuple], scaling: float = 1.0
                     ) -> float:
    """max over layers of ``||s B A - P_r||_F / ||P_r||_F`` against reference minor parts P_r."""
    worst = 0.0
    for ref, (_, a, b) in zip(references, parts, strict=True):
        got = scaling * (b.double() @ a.double())
        worst = max(worst, float((got - ref).norm() / ref.norm()))
    return worst


def reference_minor_parts(weights: list[torch.Tensor], rank: int) -> list[torch.Tensor]:
    """``U_r diag(S_r) V_r^T`` of the r smallest triplets from a float64 ``torch.linalg.svd``."""
    parts = []
    for w in weights:
        u, s, vh = torch.linalg.svd(w.double(), full_matrices=False)
        parts.append((u[:, -rank:] * s[-rank:]) @ vh[-rank:])
    return parts


def run_svd_benchmark(spec: SVDSpec, repeats: int = 3, device: str = "cpu", seed: int = 0,
                      progress: Callable[[str], None] | None = None) -> dict:
    """Time ``inject_soma`` vs :func:`official_svd_loop` on the same weights, interleaved, and
    measure the accuracy of both; returns the result record (see :mod:`.report`)."""
    dev = torch.device(device)
    named = spec.layer_shapes()
    names = [n for n, _ in named]
    start = time.perf_counter()
    weights = realistic_weights([s for _, s in named], seed=seed, device=dev)
    gen_seconds = time.perf_counter() - start
    accuracy: dict[str, dict[str, float]] = {}
    # accuracy sample: every layer of the first adapted block (one of each shape)
    sample = [i for i, n in enumerate(names) if n.startswith(f"blocks.{spec.start_block}.")]
    references = reference_minor_parts([weights[i] for i in sample], spec.rank)

    def record(method: str, parts: list[tuple]) -> None:
        if method not in accuracy:
            accuracy[method] = {
                "recon_max_rel_err": reconstruction_error(weights, parts),
                "minor_max_rel_err": minor_part_error(references, [parts[i] for i in sample]),
            }

    def official() -> float:
        with Timer(dev) as t:
            parts = official_svd_loop(weights, spec.rank)
        record("official_svd_loop", parts)
        return t.seconds

    def soma_d2() -> float:
        run = soma_d2_decompose(names, weights, spec)
        with Timer(dev) as t:
            parts = run()
        record("soma_d2_batched", parts)
        return t.seconds

    cache_root = tempfile.TemporaryDirectory(prefix="soma_svd_bench_cache_")
    hit_cache = DecompositionCache(f"{cache_root.name}/hit")

    def cache_miss() -> float:
        # an empty cache directory each time: decomposition + digest + entry written
        miss_cache = DecompositionCache(tempfile.mkdtemp(dir=cache_root.name))
        run = soma_d2_decompose(names, weights, spec, miss_cache)
        with Timer(dev) as t:
            parts = run()
        record("soma_d2_cache_miss", parts)
        return t.seconds

    def cache_hit() -> float:
        run = soma_d2_decompose(names, weights, spec, hit_cache)
        with Timer(dev) as t:
            parts = run()
        record("soma_d2_cache_hit", parts)
        return t.seconds

    # one-time costs (LAPACK/scipy loading) on a small matrix, so that no repetition pays them;
    # the hit cache is filled before any timed run
    small = realistic_weights([(16, 16)], seed=seed, device=dev)
    official_svd_loop(small, 2)
    decompose_weights(small, 2)
    soma_d2_decompose(names, weights, spec, hit_cache)()
    with cache_root:
        samples = run_interleaved({"official_svd_loop": official, "soma_d2_batched": soma_d2,
                                   "soma_d2_cache_miss": cache_miss,
                                   "soma_d2_cache_hit": cache_hit},
                                  repeats=repeats, warmup=0, progress=progress)
    base = samples["official_svd_loop"]
    rows = []
    for method, label in (("official_svd_loop", "official: torch.linalg.svd per layer (fp32)"),
                          ("soma_d2_batched", "soma-d2: batched partial decomposition"),
                          ("soma_d2_cache_miss", "soma-d2 + decomposition cache, miss"),
                          ("soma_d2_cache_hit", "soma-d2 + decomposition cache, hit")):
        row = {"method": method, "label": label, "stats": summarize(samples[method]),
               **paired_ratio(samples[method], base), **accuracy[method]}
        row["speedup"] = 1.0 / row["ratio"]
        rows.append(row)
    shapes = sorted({s for _, s in named})
    settings = {**asdict(spec), "layers": len(names), "shapes": [list(s) for s in shapes],
                "device": str(dev), "repeats": repeats, "seed": seed,
                "weights_generated_s": gen_seconds,
                "accuracy_sample": [names[i] for i in sample]}
    result = make_result("svd", "Decomposition of all targeted weights (inject_soma vs "
                         "per-layer torch.linalg.svd)", settings, "official_svd_loop", "s", False,
                         rows)
    soma_row, base_row = rows[1], rows[0]
    result["goals"].append(goal("soma-d2 speed-up vs the official loop", soma_row["speedup"],
                                ">=", 3.0))
    miss_row, hit_row = rows[2], rows[3]
    result["goals"].append(goal("decomposition cache: hit speed-up vs miss (median ratio)",
                                summarize(samples["soma_d2_cache_miss"])["median"]
                                / summarize(samples["soma_d2_cache_hit"])["median"], ">=", 10.0))
    result["goals"].append(goal("cache hit gives the miss's factors (minor-part error ratio)",
                                hit_row["minor_max_rel_err"]
                                / max(miss_row["minor_max_rel_err"], 1e-300), "<=", 1.0))
    result["goals"].append(goal("soma-d2 minor-part error / official's (equal or better)",
                                soma_row["minor_max_rel_err"]
                                / max(base_row["minor_max_rel_err"], 1e-300), "<=", 1.0))
    result["notes"].append(
        f"{len(names)} layers, shapes {', '.join(f'{o}x{i}' for o, i in shapes)}, rank "
        f"{spec.rank}; weights: float32 with a power-law spectrum (generated in "
        f"{gen_seconds:.1f} s, not timed). minor error: vs float64 torch.linalg.svd on "
        f"{len(sample)} layers of block {spec.start_block}.")
    return result


def svd_table(result: dict) -> str:
    """The SVD benchmark as a markdown table with goals and notes."""
    headers = ["method", "time s, median [min-max]", "time vs official", "speed-up",
               "recon err (max rel)", "minor-part err (max rel)"]
    cells = [[r["label"], fmt_stats(r["stats"]), fmt_ratio(r), f"{r['speedup']:.2f}x",
              fmt_num(r["recon_max_rel_err"]), fmt_num(r["minor_max_rel_err"])]
             for r in result["rows"]]
    return render(result, headers, cells)
