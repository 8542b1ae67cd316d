"""results_mask2former.{json,md}: the equivalence rows per size and the timing per size.

The soma-d2 half (`mask2former_soma_d2.py --out`) and the timing driver
(`mask2former_timing.py --out`) each update their part, so one size can be re-run without the
others; the markdown is rewritten from the JSON every time.
"""
from __future__ import annotations

import json
import os

from benchmarks.official.protocol import summarise, write_results

__all__ = ["update_results"]

COMMANDS = """\
    SIDE=/path/to/side-venv/bin/python SOMA=/path/to/SoMA   # ysj9909/SoMA @ 7ea8c0e
    $SIDE benchmarks/official/mask2former_official.py --soma $SOMA --size {size} \\
        --out /tmp/m2f_{size}.pt
    PYTHONPATH=.:projects/Mask2Former python -m benchmarks.official.mask2former_soma_d2 \\
        --bundle /tmp/m2f_{size}.pt --out benchmarks/official/results_mask2former
    PYTHONPATH=.:projects/Mask2Former python -m benchmarks.official.mask2former_timing \\
        --bundle /tmp/m2f_{size}.pt --soma $SOMA --side-python $SIDE --repeats 3 \\
        --out benchmarks/official/results_mask2former"""

NOTES = """\
Random weights (seeded, every tensor non-zero, see `mask2former_official.randomize`), both sides
fed the same normalised tensors. `max rel` = max |ours - official| / max |official| over the
stage. Losses: the official loss's `torch.rand` draws (matching points and importance-sampling
candidates) are recorded and replayed to ours in our layer order (ours computes the last
prediction's losses first, mmdet the initial prediction's), so both sample the same points.
Train step = forward + all 3 x (decoder layers + 1) losses + backward (no optimizer step);
inference = one slide inference (official window / stride) of the slide image; ours batches
the windows (CROP_BATCH 8), the official code runs them one at a time.

Full size: the slide scores (only the first window) and the gradients differ more than the other
stages. Both are float32 sensitivity, not a difference of method: the masked attention
thresholds mask logits at 0 and some lie within 1e-6 of it (min |logit| 2.7e-07 in that window),
so rounding flips an attention-mask entry, and the gradient of bilinear sampling (MSDA) jumps
where a sampling point crosses a pixel edge. Ours vs ours with the inputs x (1 + 1e-7 N(0, 1))
moves our gradients by 3.5e-04 (head) and 3.3e-05 (backbone) max abs, against 4.4e-04 and
4.1e-05 ours vs official (`mask2former_soma_d2.py --sensitivity`)."""


GROUPS = [("backbone taps", "backbone tap"), ("pixel decoder", "pixel decoder"),
          ("class / mask logits (all sets)", "decoder prediction"),
          ("sem_seg whole / slide", "sem_seg scores"), ("losses (each)", "loss loss"),
          ("gradients", "gradients")]


def group_summary(rows: list[dict]) -> list[tuple[str, float, float]]:
    """(group, max abs, max rel) over the stages of each group (the README's summary row)."""
    out = []
    for group, prefix in GROUPS:
        sel = [r for r in rows if r["stage"].startswith(prefix)]
        if sel:
            out.append((group, max(r["max_abs"] for r in sel), max(r["max_rel"] for r in sel)))
    return out


def _markdown(data: dict) -> str:
    out = ["# Mask2Former (segmentation): soma-d2 vs the official SoMA code", "", NOTES, ""]
    for size, result in data.get("equivalence", {}).items():
        c = result["config"]
        out += [f"## Equivalence, size `{size}`", "",
                f"ViT {c['embed_dim']} x {c['depth']} blocks (taps {c['out_indices']}), head "
                f"{c['feat_channels']} channels, {c['num_queries']} queries, "
                f"{c['enc_layers']} + {c['dec_layers']} layers, {c['num_points']} points; "
                f"train batch {c['train_batch']} x {c['train_size']}, whole "
                f"{c['whole_batch']} x {c['whole_size']}, slide {c['slide_size']} "
                f"(window {c['slide_crop']}, stride {c['slide_stride']}). Official code "
                f"{result.get('official_commit')}.", "",
                "| group | max abs | max rel |", "|---|---|---|",
                *[f"| {g} | {a:.2g} | {r:.2g} |" for g, a, r in group_summary(result["stages"])],
                "", summarise(result["stages"]), "",
                "Reproduce:", "", COMMANDS.format(size=size), ""]
    timing = data.get("timing", {})
    if timing:
        out += ["## CPU time, soma-d2 / official (interleaved)", "",
                "| size | step | official median s | soma-d2 median s | ratio (median of rounds) "
                "| rounds | threads |", "|---|---|---|---|---|---|---|"]
        for size, t in timing.items():
            for cmd in ("train", "infer"):
                r = t[cmd]
                out.append(f"| {size} | {cmd} | {r['official_median_s']:.3f} | "
                           f"{r['soma_d2_median_s']:.3f} | {r['ratio_median']:.3f} | "
                           f"{t['repeats']} | {t['threads']} |")
        out.append("")
    return "\n".join(out)


def update_results(stem: str, equivalence: dict | None = None, timing: dict | None = None
                   ) -> None:
    """Merge one size's equivalence result and/or timing into `<stem>.json`, rewrite the md."""
    data: dict = {"model": "mask2former", "equivalence": {}, "timing": {}}
    if os.path.isfile(stem + ".json"):
        with open(stem + ".json") as f:
            data.update(json.load(f))
    if equivalence is not None:
        data["equivalence"][equivalence["size"]] = equivalence
    if timing is not None:
        data["timing"][timing["size"]] = timing
    write_results(stem, data, _markdown(data))
