"""soma-d2 half of the Mask2Former equivalence harness: runs in the project environment.

Reads a bundle written by `mask2former_official.py` (the official segmenter's random state dict,
the inputs and every recorded stage), converts the state dict with
`soma_d2.checkpoint.official_soma.convert_official_backbone` + `soma_mask2former.official_convert
.convert_official_mask2former` into a `SoMAMask2Former` built from
configs/gta2cbm_released_semseg.yaml at the bundle's size (MODE released: full W plus factors,
as the official code computes), loads it strictly and runs the same inputs through the same
stages: backbone taps, pixel decoder (mask features, memories), class / mask logits of every
prediction set, whole-image and slide sem_seg scores, and the training losses on the batch with
the official loss's `torch.rand` draws replayed (the point samples of matching and of the loss;
mmdet draws layer by layer from the initial prediction to the last, ours the last first, so
the draws are served in our order: per layer the images' matching draws, then the two
importance-sampling draws), and the gradients of the summed losses (head, backbone). `results_mask2former.{json,md}` (`mask2former_results.update_results`) get max abs / max rel differences
per stage (rel = max |a - b| / max |official|, `protocol.compare_stage`); with
`--sensitivity` also ours vs ours on inputs nudged by a relative 1e-7 (the scale of float32
rounding), the yardstick for the stages that rounding alone moves most. `--serve` is the timing worker of
`mask2former_timing.py`.
"""
from __future__ import annotations

import argparse
from collections.abc import Iterator

import torch

from benchmarks.official.mask2former_results import update_results
from benchmarks.official.protocol import compare_stage, load_bundle, serve_commands, summarise

__all__ = ["build_ours", "compare", "soma_d2_cfg"]

BASE_CONFIG = "configs/gta2cbm_released_semseg.yaml"


def soma_d2_cfg(size: dict):
    """Detectron2 config of `SoMAMask2Former` matching the official model of `size` (an entry
    of SIZES, or the `config` of a key-list data file)."""
    from detectron2.config import get_cfg

    from soma_d2.config import add_soma_config
    from soma_d2.utils.paths import resolve_repo_path

    cfg = add_soma_config(get_cfg())
    cfg.merge_from_file(resolve_repo_path(BASE_CONFIG))
    cfg.MODEL.DEVICE = "cpu"
    v = cfg.MODEL.VIT
    v.EMBED_DIM, v.DEPTH, v.NUM_HEADS = size["embed_dim"], size["depth"], size["num_heads"]
    v.IMG_SIZE, v.OUT_INDICES = size["img_size"], list(size["out_indices"])
    s = cfg.MODEL.SOMA
    s.PRETRAINED, s.RANK, s.ALPHA = "", size["rank"], float(size["rank"])
    s.START_BLOCK = size["start_lora_idx"]
    s.DECOMPOSITION_CACHE = False
    m = cfg.MODEL.MASK2FORMER
    m.HIDDEN_DIM = m.MASK_DIM = size["feat_channels"]
    m.NUM_GROUPS, m.NUM_HEADS = size["num_groups"], size["attn_heads"]
    m.NUM_QUERIES = size["num_queries"]
    m.ENC_LAYERS, m.ENC_FFN_DIM = size["enc_layers"], size["enc_ffn"]
    m.DEC_LAYERS, m.DEC_FFN_DIM = size["dec_layers"], size["dec_ffn"]
    m.TRAIN_NUM_POINTS = size["num_points"]
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = size["num_classes"]
    inf = cfg.MODEL.SEM_SEG_INFERENCE
    inf.CROP_SIZE, inf.STRIDE = tuple(size["slide_crop"]), tuple(size["slide_stride"])
    cfg.INPUT.CROP.SIZE = tuple(size["train_size"])
    return cfg


def convert(state: dict[str, torch.Tensor], check: bool = True) -> dict[str, torch.Tensor]:
    """Official segmenter state dict -> `SoMAMask2Former` state dict; with `check`, every key
    must be accounted for (not for a subset such as the gradients)."""
    from soma_mask2former.official_convert import convert_official_mask2former

    from soma_d2.checkpoint.official_soma import check_consumed, convert_official_backbone

    backbone, used_b = convert_official_backbone(state)
    head, used_h = convert_official_mask2former(state)
    if check:
        check_consumed(state, used_b | used_h)
    return {**backbone, **head}


def build_ours(size: dict, state: dict[str, torch.Tensor] | None = None) -> torch.nn.Module:
    """Our model of `size`; with `state` (official layout) converted and loaded strictly."""
    import soma_mask2former  # noqa: F401  (registers the meta-architecture, head and backbone)
    from detectron2.modeling import build_model

    model = build_model(soma_d2_cfg(size))
    if state is not None:
        model.load_state_dict(convert(state), strict=True)
    return model.eval()


class _Replay:
    """Serve recorded `torch.rand` draws in a given order; shapes must match."""

    def __init__(self, draws: list[torch.Tensor]):
        self.draws: Iterator[torch.Tensor] = iter(draws)
        self.real = torch.rand
        self.count = 0

    def __call__(self, *size, **kwargs):
        want = tuple(size[0]) if len(size) == 1 and not isinstance(size[0], int) else size
        draw = next(self.draws, None)
        if draw is None or tuple(draw.shape) != tuple(want):
            raise RuntimeError(f"random draw {self.count}: soma-d2 asks {want}, the official "
                               f"run drew {None if draw is None else tuple(draw.shape)}")
        self.count += 1
        return draw.clone().to(kwargs.get("device") or "cpu")

    def __enter__(self):
        torch.rand = self
        return self

    def __exit__(self, *exc):
        torch.rand = self.real


def _our_draw_order(draws: list[torch.Tensor], layers: int, batch: int) -> list[torch.Tensor]:
    """Official order (prediction 0 .. last, each: `batch` matching draws + 2 sampling draws)
    -> ours (last first, then 0 .. last - 1)."""
    per = batch + 2
    if len(draws) != layers * per:
        raise ValueError(f"{len(draws)} official draws, expected {layers} x ({batch} + 2)")
    chunks = [draws[i * per:(i + 1) * per] for i in range(layers)]
    return [d for chunk in [chunks[-1], *chunks[:-1]] for d in chunk]


def _batched(images: torch.Tensor, labels: torch.Tensor | None = None) -> list[dict]:
    out = []
    for i, image in enumerate(images):
        record = {"image": image, "height": image.shape[-2], "width": image.shape[-1]}
        if labels is not None:
            record["sem_seg"] = labels[i]
        out.append(record)
    return out


def _normalized(model, images: torch.Tensor) -> torch.Tensor:
    return (images - model.pixel_mean) / model.pixel_std


def _loss_name(official: str) -> str:
    """mmseg `decode.d<i>.loss_cls` / `decode.loss_mask` -> ours `loss_ce_<i>` / `loss_mask`."""
    parts = official.split(".")
    leaf = parts[-1].replace("loss_cls", "loss_ce")
    return f"{leaf}_{parts[-2][1:]}" if len(parts) == 3 else leaf


def our_train_losses(model, inputs, draws: list[torch.Tensor] | None = None) -> dict:
    batched = _batched(inputs["train_images"], inputs["train_labels"])
    model.train()
    try:
        if draws is None:
            return model(batched)
        with _Replay(draws):
            return model(batched)
    finally:
        model.eval()


@torch.no_grad()
def our_stages(model, inputs) -> dict:
    head = model.sem_seg_head
    x = _normalized(model, inputs["train_images"])
    feats = model.backbone(x)
    taps = [feats[k] for k in head.in_features]
    mask_features, memories = head.pixel_decoder(taps)
    preds = head.transformer_decoder(memories, mask_features)
    model.inference_mode = "whole"
    whole = model.whole_inference(_normalized(model, inputs["whole_images"]))
    model.inference_mode = "slide"
    slide = model.slide_inference(_normalized(model, inputs["slide_image"]))
    return {"taps": taps, "mask_features": mask_features, "memories": memories,
            "cls": [c for c, _ in preds], "masks": [m for _, m in preds],
            "sem_seg_whole": whole, "sem_seg_slide": slide}


def compare(bundle: dict) -> dict:
    """Per-stage rows (`protocol.compare_stage`) of ours vs the official recorded outputs."""
    meta = bundle["meta"]
    size = meta["config"]
    model = build_ours(size, bundle["state_dict"])
    ref = bundle["outputs"]
    inputs = bundle["inputs"]
    ours = our_stages(model, inputs)
    rows = []
    names = ["res2 (x4)", "res3 (x2)", "res4 (x1)", "res5 (x0.5)"]
    for name, a, b in zip(names, ours["taps"], ref["taps"]):
        rows.append(compare_stage(f"backbone tap {name}", a, b))
    rows.append(compare_stage("pixel decoder mask features", ours["mask_features"],
                              ref["mask_features"]))
    for i, (a, b) in enumerate(zip(ours["memories"], ref["memories"])):
        rows.append(compare_stage(f"pixel decoder memory {i} (stride {32 >> i})", a, b))
    for kind, key in (("class", "cls"), ("mask", "masks")):
        for i, (a, b) in enumerate(zip(ours[key], ref[key])):
            rows.append(compare_stage(f"decoder prediction {i} {kind} logits", a, b))
    for mode in ("whole", "slide"):
        a, b = ours[f"sem_seg_{mode}"], ref[f"sem_seg_{mode}"]
        agree = (a.argmax(1) == b.argmax(1)).double().mean().item()
        rows.append(compare_stage(f"sem_seg scores ({mode})", a, b,
                                  note=f"argmax agreement {agree:.6f}"))
    draws = _our_draw_order(ref["rand_draws"], len(ref["cls"]), size["train_batch"])
    losses = our_train_losses(model, inputs, draws)
    for official, value in ref["losses"].items():
        name = _loss_name(official)
        rows.append(compare_stage(f"loss {name}", losses[name].detach().reshape(value.shape),
                                  value, note=f"official {official}"))
    total = sum(losses.values())
    rows.append(compare_stage("loss total", total.detach().reshape(1),
                              sum(v.reshape(1) for v in ref["losses"].values())))
    if "grads" in ref:
        total.backward()
        rows += _gradient_rows(model, ref["grads"])
    return {"model": "mask2former", "size": meta["size"],
            "official_commit": meta.get("official_commit"), "config": size, "stages": rows}


def _gradient_rows(model, official: dict[str, torch.Tensor]) -> list[dict]:
    """Gradients of the summed losses, head and backbone, official names converted to ours;
    parameters trained on one side only are named in the note."""
    ours = {k: p.grad for k, p in model.named_parameters() if p.grad is not None}
    named = convert(official, check=False)
    rows = []
    for part, prefix in (("head", "sem_seg_head."), ("backbone", "backbone.")):
        mine = {k: v for k, v in ours.items() if k.startswith(prefix)}
        theirs = {k: v for k, v in named.items() if k.startswith(prefix)}
        common = sorted(set(mine) & set(theirs))
        only = sorted(set(mine) ^ set(theirs))
        note = f"{len(common)} tensors" + (f"; trained on one side only: {only}" if only else "")
        rows.append(compare_stage(f"gradients, {part}", [mine[k] for k in common],
                                  [theirs[k] for k in common], note=note))
    return rows


def sensitivity(bundle: dict, scale: float = 1e-7) -> list[dict]:
    """Ours vs ours with the inputs multiplied by (1 + `scale` N(0, 1)): how much float32
    rounding alone moves the gradients and the slide scores (the thresholded masked attention
    and the edges of bilinear sampling make both sensitive); rows beside the official ones."""
    model = build_ours(bundle["meta"]["config"], bundle["state_dict"])
    ref = bundle["outputs"]
    size = bundle["meta"]["config"]
    draws = _our_draw_order(ref["rand_draws"], len(ref["cls"]), size["train_batch"])
    gen = torch.Generator().manual_seed(5)
    inputs = bundle["inputs"]
    nudged = dict(inputs)
    for key in ("train_images", "slide_image"):
        x = inputs[key]
        nudged[key] = x * (1 + scale * torch.randn(x.shape, generator=gen))
    out = {}
    for name, data in (("base", inputs), ("nudged", nudged)):
        model.zero_grad(set_to_none=True)
        sum(our_train_losses(model, data, list(draws)).values()).backward()
        grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
        with torch.no_grad():
            slide = model.slide_inference(_normalized(model, data["slide_image"]))
        out[name] = (grads, slide)
    note = f"ours vs ours, inputs x (1 + {scale:g} N(0, 1))"
    rows = [compare_stage("sensitivity: sem_seg scores (slide)", out["nudged"][1],
                          out["base"][1], note=note)]
    for part, prefix in (("head", "sem_seg_head."), ("backbone", "backbone.")):
        keys = sorted(k for k in out["base"][0] if k.startswith(prefix))
        rows.append(compare_stage(f"sensitivity: gradients, {part}",
                                  [out["nudged"][0][k] for k in keys],
                                  [out["base"][0][k] for k in keys], note=note))
    return rows


def serve(bundle: dict) -> None:
    """Timing worker: 'train' = one forward + loss + backward, 'infer' = one slide inference."""
    model = build_ours(bundle["meta"]["config"], bundle["state_dict"])
    inputs = bundle["inputs"]
    params = [p for p in model.parameters() if p.requires_grad]
    slide = _normalized(model, inputs["slide_image"])
    model.inference_mode = "slide"

    def train() -> None:
        for p in params:
            p.grad = None
        sum(our_train_losses(model, inputs).values()).backward()

    def infer() -> None:
        with torch.no_grad():
            model.slide_inference(slide)

    serve_commands({"train": train, "infer": infer})


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", required=True, help="written by mask2former_official.py")
    ap.add_argument("--out", help="results path stem (writes <stem>.json and <stem>.md)")
    ap.add_argument("--serve", action="store_true")
    ap.add_argument("--sensitivity", action="store_true",
                    help="also rows of ours vs ours on inputs nudged at float32 rounding")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    bundle = load_bundle(args.bundle)
    if args.serve:
        serve(bundle)
        return
    result = compare(bundle)
    if args.sensitivity:
        result["stages"] += sensitivity(bundle)
    table = summarise(result["stages"])
    print(table)
    if args.out:
        update_results(args.out, equivalence=result)


if __name__ == "__main__":
    main()
