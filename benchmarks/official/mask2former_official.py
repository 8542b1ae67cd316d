"""Official half of the Mask2Former equivalence harness: runs in the side environment.

Builds the official SoMA segmenter from a checkout of ysj9909/SoMA (`--soma`, its `rein/` package
and `configs/sora/sora_dinov2-L_mask2former.py`, on mmseg 1.2.2 / mmdet 3.3.0 / mmengine 0.10.7 /
mmcv-lite 2.0.0 with the stand-ins of this folder for `mmcv._ext` and PEFT's one helper) at a
size of `mask2former_sizes.SIZES`, gives every tensor random values (seeded; unit-scale
activations, MSDA offsets and layer scales non-zero, so that no stage is trivially zero), and
records on fixed inputs: the four backbone taps, the pixel decoder's mask features and
multi-scale memories, every decoder layer's class and mask logits, the whole-image and slide
sem_seg scores, the training losses on one batch together with every `torch.rand` draw the loss
makes (the point samples; the soma-d2 half replays them) and the gradients of their sum, and saves them with the state dict
and the inputs as one bundle (`protocol.save_bundle`). Images are fed normalised (mmseg's
`SegDataPreProcessor` arithmetic, done here in RGB), so both halves see the same tensors.
`--keys-json` writes the official key list and shapes (the data of
tests/test_official_convert_mask2former.py); `--serve` answers "train" / "infer" lines with the
seconds of one official training step / slide inference (the timing driver interleaves them
with soma-d2's). No code of the official repository is copied: it is imported from `--soma`.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from mask2former_sizes import SIZES  # noqa: E402
from protocol import install_standins, save_bundle, serve_commands  # noqa: E402

MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)
CONFIG = "configs/sora/sora_dinov2-L_mask2former.py"


def _import_official(soma: str) -> None:
    install_standins()
    sys.path.insert(0, os.path.abspath(soma))
    import mmseg.models  # noqa: F401  (registers mmseg's and, through it, mmdet's modules)
    import rein  # noqa: F401  (PEFTBackboneEncoderDecoder, DinoVisionTransformer, SoRA)


def build_official(soma: str, size: str) -> torch.nn.Module:
    """The official segmenter of `size`, random weights (seed 0), eval mode."""
    _import_official(soma)
    from mmengine import Config
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    s = SIZES[size]
    cfg = Config.fromfile(os.path.join(soma, CONFIG))
    m = cfg.model
    m.backbone.init_cfg = None
    m.backbone.update(embed_dim=s["embed_dim"], depth=s["depth"], num_heads=s["num_heads"],
                      img_size=s["img_size"], out_indices=s["out_indices"])
    # randomize() overwrites every tensor, so the constructor's SoRA init only costs time: its
    # randomized low-rank variant (an official option) replaces the full SVD of every layer
    m.backbone.lora_cfg.update(r=s["rank"], lora_alpha=s["rank"],
                               start_lora_idx=s["start_lora_idx"], lora_weight_init="sora_niter_1")
    d = m.decode_head
    c = s["feat_channels"]
    d.update(in_channels=[s["embed_dim"]] * 4, feat_channels=c, out_channels=c,
             num_classes=s["num_classes"], num_queries=s["num_queries"])
    d.loss_cls.class_weight = [1.0] * s["num_classes"] + [0.1]
    d.train_cfg.num_points = s["num_points"]
    pd = d.pixel_decoder
    pd.norm_cfg.num_groups = s["num_groups"]
    pd.encoder.num_layers = s["enc_layers"]
    pd.encoder.layer_cfg.self_attn_cfg.update(embed_dims=c, num_heads=s["attn_heads"])
    pd.encoder.layer_cfg.ffn_cfg.update(embed_dims=c, feedforward_channels=s["enc_ffn"])
    pd.positional_encoding.num_feats = c // 2
    d.positional_encoding.num_feats = c // 2
    td = d.transformer_decoder
    td.num_layers = s["dec_layers"]
    for key in ("self_attn_cfg", "cross_attn_cfg"):
        td.layer_cfg[key].update(embed_dims=c, num_heads=s["attn_heads"])
    td.layer_cfg.ffn_cfg.update(embed_dims=c, feedforward_channels=s["dec_ffn"])
    m.test_cfg.update(crop_size=tuple(s["slide_crop"]), stride=tuple(s["slide_stride"]))
    init_default_scope("mmseg")
    model = MODELS.build(m)
    randomize(model)
    model.eval()  # the official train() override returns None, so no chaining
    return model


@torch.no_grad()
def randomize(model: torch.nn.Module, seed: int = 0) -> None:
    """Every parameter random, in state-dict order: norm weights 1 + N(0, 0.1), layer scales
    0.1 (1 + N(0, 0.1)), other vectors N(0, 0.1), matrices N(0, 1 / fan_in) (the mask MLP x 0.25
    so that mask logits stay of order 1)."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
        if p.dim() == 1 and ("norm" in name or ".gn." in name) and name.endswith("weight"):
            value = 1 + 0.1 * noise
        elif name.endswith("gamma"):
            value = 0.1 * (1 + 0.1 * noise)
        elif p.dim() == 1 or p.shape[-1] == p.numel():
            value = 0.1 * noise
        else:
            gain = 0.25 if "mask_embed" in name else 1.0
            value = gain * noise / math.sqrt(p[0].numel())
        p.copy_(value)


def make_inputs(size: str, seed: int = 1) -> dict[str, torch.Tensor]:
    """Raw RGB images (0..255, float) and label maps: a training batch at the crop size with a
    few classes in blocks and an ignore band, a whole-image batch and a slide image."""
    s = SIZES[size]
    gen = torch.Generator().manual_seed(seed)

    def images(batch, hw):
        return torch.randint(0, 256, (batch, 3, *hw), generator=gen).float()

    tb, (th, tw) = s["train_batch"], s["train_size"]
    labels = torch.zeros(tb, th, tw, dtype=torch.long)
    for b in range(tb):
        classes = torch.randperm(s["num_classes"], generator=gen)[:3]
        labels[b, : th // 2, : tw // 2] = classes[0]
        labels[b, : th // 2, tw // 2:] = classes[1]
        labels[b, th // 2:] = classes[2]
        labels[b, th - th // 8:, : tw // 3] = 255
    return {"train_images": images(tb, (th, tw)), "train_labels": labels,
            "whole_images": images(s["whole_batch"], s["whole_size"]),
            "slide_image": images(1, s["slide_size"])}


def normalize(images: torch.Tensor) -> torch.Tensor:
    """`SegDataPreProcessor`: (x - mean) / std per channel (RGB, after its BGR -> RGB flip)."""
    mean = torch.tensor(MEAN).view(-1, 1, 1)
    std = torch.tensor(STD).view(-1, 1, 1)
    return (images - mean) / std


def _metas(images: torch.Tensor) -> list[dict]:
    """Test-time metas as the official pipeline makes them: no `pad_shape` (the data
    preprocessor has no test_cfg), so the head upsamples to `img_shape` (the crop in slide
    mode)."""
    shape = tuple(images.shape[-2:])
    return [dict(img_shape=shape, ori_shape=shape) for _ in images]


def _samples(images: torch.Tensor, labels: torch.Tensor | None = None) -> list:
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    out = []
    for i, meta in enumerate(_metas(images)):
        sample = SegDataSample(metainfo=meta)
        if labels is not None:
            sample.gt_sem_seg = PixelData(data=labels[i][None])
        out.append(sample)
    return out


def train_losses(model, inputs, record: list | None = None) -> dict[str, torch.Tensor]:
    """The official `EncoderDecoder.loss` on the training batch (train mode); every
    `torch.rand` result is appended to `record` when given."""
    images = normalize(inputs["train_images"])
    samples = _samples(images, inputs["train_labels"])
    model.train()
    real = torch.rand

    def recording(*args, **kwargs):
        out = real(*args, **kwargs)
        record.append(out.clone())
        return out

    if record is not None:
        torch.rand = recording
    try:
        losses = model.loss(images, samples)
    finally:
        torch.rand = real
        model.eval()
    return losses


@torch.no_grad()
def record_stages(model, inputs) -> dict:
    head = model.decode_head
    images = normalize(inputs["train_images"])
    taps = model.extract_feat(images)
    mask_features, memories = head.pixel_decoder(taps)
    cls, masks = head(taps, _samples(images))
    out = {"taps": [t.clone() for t in taps], "mask_features": mask_features,
           "memories": list(memories), "cls": list(cls), "masks": list(masks)}
    whole = normalize(inputs["whole_images"])
    model.test_cfg.mode = "whole"
    out["sem_seg_whole"] = model.inference(whole, _metas(whole))
    slide = normalize(inputs["slide_image"])
    model.test_cfg.mode = "slide"
    out["sem_seg_slide"] = model.inference(slide, _metas(slide))
    return out


def keys_json(model, size: str, soma: str) -> dict:
    return {
        "about": "state-dict keys and shapes of the official SoMA segmenter (PEFTBackbone"
                 "EncoderDecoder, configs/sora/sora_dinov2-L_mask2former.py) at the harness size "
                 f"{size!r}; written by benchmarks/official/mask2former_official.py --keys-json",
        "size": size, "config": SIZES[size], "official_commit": _commit(soma),
        "keys": {k: list(v.shape) for k, v in model.state_dict().items()},
    }


def write_keys_json(data: dict, path: str) -> None:
    """One key per line (reviewable diffs), everything else compact."""
    lines = [f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in data["keys"].items()]
    head = {k: v for k, v in data.items() if k != "keys"}
    text = json.dumps(head)[:-1] + ', "keys": {\n' + ",\n".join(lines) + "\n}}\n"
    json.loads(text)
    with open(path, "w") as f:
        f.write(text)


def _commit(soma: str) -> str:
    head = os.path.join(soma, ".git", "HEAD")
    if os.path.isfile(head):
        return open(head).read().strip()
    return os.environ.get("SOMA_COMMIT", "ysj9909/SoMA@7ea8c0e")


def serve(model, inputs) -> None:
    """One command per stdin line: 'train' (loss + backward) or 'infer' (slide inference);
    answers one JSON line with the seconds."""
    slide = normalize(inputs["slide_image"])
    params = [p for p in model.parameters() if p.requires_grad]

    def train() -> None:
        for p in params:
            p.grad = None
        losses = train_losses(model, inputs)
        sum(v for k, v in losses.items() if "loss" in k).backward()

    def infer() -> None:
        model.test_cfg.mode = "slide"
        with torch.no_grad():
            model.inference(slide, _metas(slide))

    serve_commands({"train": train, "infer": infer})


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--soma", required=True, help="checkout of ysj9909/SoMA")
    ap.add_argument("--size", choices=sorted(SIZES), default="tiny")
    ap.add_argument("--out", help="bundle to write (state dict, inputs, recorded stages)")
    ap.add_argument("--keys-json", help="write the official key list and shapes here")
    ap.add_argument("--serve", action="store_true", help="timing worker (see module doc)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    # the SoRA wrapper prints every trainable name on stdout; serve mode talks JSON there
    with contextlib.redirect_stdout(sys.stderr):
        model = build_official(args.soma, args.size)
    inputs = make_inputs(args.size)
    if args.serve:
        serve(model, inputs)
        return
    if args.keys_json:
        write_keys_json(keys_json(model, args.size, args.soma), args.keys_json)
    if args.out:
        stages = record_stages(model, inputs)
        draws: list[torch.Tensor] = []
        losses = train_losses(model, inputs, draws)
        stages["losses"] = {k: v.detach() for k, v in losses.items()}
        stages["rand_draws"] = draws
        sum(v for k, v in losses.items() if "loss" in k).backward()
        stages["grads"] = {k: p.grad for k, p in model.named_parameters() if p.grad is not None}
        save_bundle(args.out, model.state_dict(), inputs, stages,
                    {"model": "mask2former", "size": args.size, "config": SIZES[args.size],
                     "official_commit": _commit(args.soma)})
        print(f"wrote {args.out}: {len(stages['losses'])} losses, {len(draws)} random draws")


if __name__ == "__main__":
    main()
