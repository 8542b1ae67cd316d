"""soma-d2 half of the Co-DINO comparison: run in the project's venv on a bundle that
``codino_official.py`` wrote (see README.md).

Converts the official state dict with ``soma_codino.official_convert`` (the converter behind
``tools/convert_official.py``), loads it strictly into ``SoMACoDINO`` built from
``configs/dwd_released.yaml`` at the bundle's size (``codino_sizes.py``), runs the same images
and, when the bundle has them, the same training batch with the same randomness switched off,
and writes per-stage differences to ``--out``.json/.md. With ``--time N`` it also times our
inference and training step (the official timings come from ``codino_official.py --time``; run
the two alternately, see README.md).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
for path in (HERE, REPO, os.path.join(REPO, "projects", "CoDINO")):
    if path not in sys.path:
        sys.path.insert(0, path)

from codino_sizes import ours_opts  # noqa: E402
from protocol import Recorder, compare_stage, load_bundle, summarise, write_results  # noqa: E402

# official loss key -> ours (layer suffixes: official "d{k}." prefix, ours "_d{k}")
_LOSS_NAMES = {
    "loss_cls": "loss_dino_cls", "loss_bbox": "loss_dino_bbox", "loss_iou": "loss_dino_giou",
    "enc_loss_cls": "loss_dino_enc_cls", "enc_loss_bbox": "loss_dino_enc_bbox",
    "enc_loss_iou": "loss_dino_enc_giou",
    "dn_loss_cls": "loss_dino_dn_cls", "dn_loss_bbox": "loss_dino_dn_bbox",
    "dn_loss_iou": "loss_dino_dn_giou",
    "loss_rpn_cls": "loss_aux_rpn_cls", "loss_rpn_bbox": "loss_aux_rpn_bbox",
    "loss_cls0": "loss_aux_rcnn_cls", "loss_bbox0": "loss_aux_rcnn_giou",
    "loss_cls1": "loss_aux_atss_cls", "loss_bbox1": "loss_aux_atss_giou",
    "loss_centerness1": "loss_aux_atss_centerness",
    "loss_cls_aux0": "loss_aux_query_rcnn_cls", "loss_bbox_aux0": "loss_aux_query_rcnn_bbox",
    "loss_iou_aux0": "loss_aux_query_rcnn_giou",
    "loss_cls_aux1": "loss_aux_query_atss_cls", "loss_bbox_aux1": "loss_aux_query_atss_bbox",
    "loss_iou_aux1": "loss_aux_query_atss_giou",
}


def our_loss_name(official: str) -> str | None:
    layer = None
    if official.startswith("d") and "." in official:
        head, official = official.split(".", 1)
        layer = int(head[1:])
    base = _LOSS_NAMES.get(official)
    if base is None:
        return None
    if layer is None:
        return base
    for group in ("loss_dino_dn", "loss_dino", "loss_aux_query_rcnn", "loss_aux_query_atss"):
        if base.startswith(group + "_"):
            return f"{group}_d{layer}_{base[len(group) + 1:]}"
    return None


def build_ours(bundle: dict):
    import soma_codino  # noqa: F401
    from detectron2.modeling import build_model
    from soma_codino.official_convert import convert_official_codino_detector

    from soma_d2.config import build_cfg

    meta = bundle["meta"]
    cfg = build_cfg(os.path.join(REPO, "configs", "dwd_released.yaml"),
                    ours_opts(meta["size"], int(meta["image"]), deterministic=True))
    torch.manual_seed(0)
    model = build_model(cfg)
    converted = convert_official_codino_detector(bundle["state_dict"], source="bundle")
    result = model.load_state_dict(converted, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    return model


def batched_inputs(inputs: dict, with_gt: bool) -> list[dict]:
    from detectron2.structures import Boxes, Instances

    out = []
    for i, img in enumerate(inputs["images"]):
        h, w = img.shape[-2:]
        x = {"image": img, "height": h, "width": w}
        if with_gt:
            inst = Instances((h, w))
            inst.gt_boxes = Boxes(inputs["gt_boxes"][i].float())
            inst.gt_classes = inputs["gt_labels"][i].long()
            x["instances"] = inst
        out.append(x)
    return out


def hook_stages(model, rec: Recorder) -> None:
    rec.hook(model.backbone, "backbone_taps")
    rec.hook(model.neck, "neck")
    rec.hook(model.query_head.encoder, "encoder_memory")
    head = model.query_head
    encode = head.encode

    def recorded_encode(*args, **kwargs):
        enc = encode(*args, **kwargs)
        rec.put("aux_maps", enc["aux_maps"])
        return enc
    head.encode = recorded_encode
    rec.restore.append(lambda: delattr(head, "encode"))
    rec.hook(head, "query_head", pick=lambda a, k, out: {
        "logits": out["logits"], "boxes": out["boxes"], "enc_logits": out["enc_logits"],
        "enc_boxes": out["enc_boxes"]})


@contextlib.contextmanager
def identity_randperm():
    """The official half's switch: ``torch.randperm(n)`` -> ``arange(n)``."""
    randperm = torch.randperm
    torch.randperm = lambda n, *a, **k: torch.arange(n, device=k.get("device"))
    try:
        yield
    finally:
        torch.randperm = randperm


def _sorted_detections(boxes, scores, labels):
    order = torch.argsort(scores, descending=True, stable=True)
    return {"boxes": boxes[order], "scores": scores[order], "labels": labels[order]}


def compare(bundle: dict, model) -> list[dict]:
    inputs, official = bundle["inputs"], bundle["outputs"]
    rows = []
    rec = Recorder()
    hook_stages(model, rec)
    model.eval()
    with torch.no_grad():
        results = model(batched_inputs(inputs, with_gt=False))
    ours = rec.finished()
    rec.remove()
    off = official["predict"]
    rows.append(compare_stage("backbone taps (4 maps)", ours["backbone_taps"],
                              off["backbone_taps"]))
    rows.append(compare_stage("neck (5 levels)", ours["neck"], off["neck"]))
    rows.append(compare_stage("encoder memory", ours["encoder_memory"], off["encoder_memory"]))
    oq, fq = ours["query_head"], off["query_head"]
    rows.append(compare_stage("aux maps 0-4 (encoder memory as maps)", ours["aux_maps"][:5],
                              fq["aux_maps"][:5]))
    rows.append(compare_stage("aux map 5 (downsample conv + GN)", ours["aux_maps"][5],
                              fq["aux_maps"][5], note=_gn_note(fq["aux_maps"][5])))
    with torch.no_grad():  # the same module on the official input: isolates the amplification
        alone = model.query_head.downsample(fq["aux_maps"][4])
    rows.append(compare_stage("aux map 5, our downsample on the official map 4", alone,
                              fq["aux_maps"][5], note="module alone, same input"))
    rows.append(compare_stage("two-stage top-k logits", oq["enc_logits"], fq["enc_logits"]))
    rows.append(compare_stage("two-stage top-k boxes", oq["enc_boxes"], fq["enc_boxes"]))
    for i, (lo, lf) in enumerate(zip(oq["logits"], fq["logits"])):
        rows.append(compare_stage(f"decoder layer {i} logits", lo, lf))
    for i, (bo, bf) in enumerate(zip(oq["boxes"], fq["boxes"])):
        rows.append(compare_stage(f"decoder layer {i} boxes", bo, bf))
    for i, (r, d) in enumerate(zip(results, off["detections"])):
        inst = r["instances"]
        mine = _sorted_detections(inst.pred_boxes.tensor, inst.scores, inst.pred_classes)
        theirs = _sorted_detections(d["boxes"], d["scores"], d["labels"])
        if len(mine["scores"]) != len(theirs["scores"]):
            rows.append({"stage": f"final detections image {i}", "max_abs": float("nan"),
                         "ref_max": float("nan"), "max_rel": float("inf"), "elements": 0,
                         "note": f"{len(mine['scores'])} kept here vs "
                                 f"{len(theirs['scores'])} officially"})
            continue
        for part in ("boxes", "scores", "labels"):
            rows.append(compare_stage(f"final detections image {i}: {part}", mine[part],
                                      theirs[part], note="after soft-NMS, sorted by score"))
    if "losses" in official:
        from detectron2.utils.events import EventStorage

        model.train()
        sampled = _count_rpn_samples(model)
        with identity_randperm(), EventStorage(0):
            losses = model(batched_inputs(inputs, with_gt=True))
        for name, value in official["losses"].items():
            mine = our_loss_name(name)
            if mine is None:
                continue  # accuracy metric (acc0), not a loss
            if mine not in losses:
                raise KeyError(f"no loss {mine!r} here for the official {name!r}; ours: "
                               f"{sorted(losses)}")
            note = ("raw: the normalisers differ in the harness only, see the next row"
                    if name.startswith("loss_rpn_") else "")
            rows.append(compare_stage(f"loss {name} / {mine}", losses[mine].detach(), value,
                                      note=note))
            if name.startswith("loss_rpn_"):
                # Detectron2 divides by batch_size_per_image x images, mmdet by the anchors
                # actually sampled; equal in the recipe (256 of ~10^5 anchors always fill the
                # quota), not with the harness's take-everything sampler
                rpn = model.rcnn.rpn
                factor = rpn.batch_size_per_image * len(inputs["images"]) / sampled[0]
                rows.append(compare_stage(
                    f"loss {name} / {mine}, renormalised", losses[mine].detach() * factor,
                    value, note=f"x {factor:.4g} = (batch_size_per_image x images) / "
                                f"{sampled[0]} sampled anchors"))
    return rows


def _count_rpn_samples(model) -> list[int]:
    """Wrap the RPN's anchor labelling to count the anchors it samples (label >= 0)."""
    rpn = model.rcnn.rpn
    label = rpn.label_and_sample_anchors
    count = [0]

    def counted(*args, **kwargs):
        labels, boxes = label(*args, **kwargs)
        count[0] = int(sum(int((lab >= 0).sum()) for lab in labels))
        return labels, boxes
    rpn.label_and_sample_anchors = counted
    return count


def _gn_note(ref: torch.Tensor) -> str:
    return (f"{tuple(ref.shape[-2:])} map: GroupNorm over {ref.shape[-2] * ref.shape[-1]} "
            "pixel(s) x channels/group, whose small variance amplifies rounding")


def time_ours(bundle: dict, model, repeats: int) -> dict:
    from detectron2.utils.events import EventStorage

    inputs = bundle["inputs"]
    times = {"inference": [], "train_step": []}
    for rep in range(repeats + 1):  # the first round warms up, untimed
        model.eval()
        t0 = time.perf_counter()
        with torch.no_grad():
            model(batched_inputs(inputs, with_gt=False))
        if rep:
            times["inference"].append(time.perf_counter() - t0)
        model.train()
        t0 = time.perf_counter()
        with identity_randperm(), EventStorage(0):
            losses = model(batched_inputs(inputs, with_gt=True))
        sum(losses.values()).backward()
        model.zero_grad(set_to_none=True)
        if rep:
            times["train_step"].append(time.perf_counter() - t0)
    return times


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", required=True, nargs="+", help="one bundle per size")
    p.add_argument("--out", default="", help="results stem: writes <out>.json and <out>.md")
    p.add_argument("--time", type=int, default=0)
    args = p.parse_args(argv)
    result, sections = {"sizes": {}}, []
    for path in args.bundle:
        bundle = load_bundle(path)
        meta = bundle["meta"]
        model = build_ours(bundle)
        rows = compare(bundle, model)
        entry = {"meta": meta, "stages": rows}
        if args.time:
            entry["timing_ours"] = time_ours(bundle, model, args.time)
        result["sizes"][meta["size"]] = entry
        sections.append(f"## {meta['size']}: {meta['image']}x{meta['image']} images, batch "
                        f"{meta['batch']}\n\n" + summarise(rows))
        del model, bundle
    md = "\n\n".join(sections)
    print(md)
    if args.out:
        write_results(args.out, result, md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
