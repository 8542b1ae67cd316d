"""Official half of the Co-DINO comparison: run in the side venv (see README.md).

Builds ``PEFTBackboneCoDETR`` from the official checkout's own config
(``DGOD/configs/sora/sora_dinov2-L_codetr_dg.py``) and code (``--official``: the SoMA repository
root; its vendored mmdet, ``projects/CO_DETR`` and ``rein`` are imported from there), at the
size of ``codino_sizes.py``, with seeded random weights (every parameter, including those the
official init leaves constant or uninitialised, e.g. ``level_embeds``, gets a random value, so
that every path carries signal). It runs inference on fixed images and, with ``--train``, the
training losses on one fixed batch, records the per-stage outputs with forward hooks and saves a
bundle (``protocol.save_bundle``). ``--dump-keys`` writes the state dict's names and shapes
(the data of tests/test_official_convert_codino.py). No official code is copied: it is imported.

Randomness in the training step, switched off the same way on both sides: DN label and box noise
0 here, 1e-12 / 1e-7 officially (mmdet asserts both are positive; the flip probability
5e-13 never fires and the shifts are below float32 resolution; DN queries are then exact GT copies), the RPN and
RoI samplers take every candidate (sample size 10^6), so no ``randperm`` choice is made, and the
auxiliary positive queries' random subset / negative fill (``torch.randperm``) is replaced by the
identity permutation on both sides. The official ``get_aux_targets`` calls ``.cuda()``; on a
CPU-only machine ``Tensor.cuda`` is made a no-op for that call.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from codino_sizes import SIZES  # noqa: E402
from protocol import Recorder, install_standins, save_bundle  # noqa: E402

ENTRY_CONFIG = os.path.join("DGOD", "configs", "sora", "sora_dinov2-L_codetr_dg.py")


def import_official(root: str) -> None:
    """Stand-ins first, then the official DGOD tree (vendored mmdet, projects, rein)."""
    install_standins()
    dgod = os.path.join(os.path.abspath(root), "DGOD")
    if not os.path.isdir(os.path.join(dgod, "projects", "CO_DETR")):
        raise FileNotFoundError(f"--official {root!r} is not a SoMA checkout (no DGOD/projects)")
    sys.path.insert(0, dgod)
    import mmdet  # noqa: F401
    import rein  # noqa: F401  (PEFTBackboneCoDETR, DinoVisionTransformer, SoRA)

    if not os.path.abspath(mmdet.__file__).startswith(dgod):
        raise RuntimeError(f"mmdet imported from {mmdet.__file__}, not the official {dgod}")


def official_model_cfg(root: str, size: str, image: int, deterministic: bool):
    """The official entry config with the size's overrides (nothing else changed)."""
    from mmengine.config import Config

    cfg = Config.fromfile(os.path.join(root, ENTRY_CONFIG))
    m = cfg.model
    m.backbone.pop("init_cfg", None)  # random weights, no pretrained file
    s = SIZES[size]
    m.backbone.img_size = image
    if size == "tiny":
        m.backbone.update(s["vit"])
        m.backbone.img_size = image
        m.backbone.lora_cfg.update(s["lora"])
        dim, ffn = s["dim"], s["ffn"]
        m.neck.update(in_channels=[s["vit"]["embed_dim"]] * 4, out_channels=dim)
        qh = m.query_head
        qh.update(num_query=s["queries"], max_pos_coords=s["max_pos"])
        qh.dn_cfg.group_cfg.num_dn_queries = s["dn_queries"]
        qh.positional_encoding.num_feats = dim // 2
        t = qh.transformer
        t.encoder.num_layers, t.decoder.num_layers = s["enc_layers"], s["dec_layers"]
        ffn_cfg = dict(type="FFN", feedforward_channels=ffn, num_fcs=2, ffn_drop=0.0,
                       act_cfg=dict(type="ReLU", inplace=True))
        for layer in (t.encoder.transformerlayers, t.decoder.transformerlayers):
            layer.feedforward_channels = ffn
            layer.ffn_cfgs = ffn_cfg
        t.encoder.transformerlayers.attn_cfgs.update(embed_dims=dim, num_heads=s["heads"],
                                                    num_points=s["points"])
        self_attn, cross_attn = t.decoder.transformerlayers.attn_cfgs
        self_attn.update(embed_dims=dim, num_heads=s["heads"])
        cross_attn.update(embed_dims=dim, num_heads=s["heads"], num_points=s["points"])
        m.rpn_head.update(in_channels=dim, feat_channels=dim)
        m.roi_head[0].bbox_roi_extractor.out_channels = dim
        m.roi_head[0].bbox_head.update(in_channels=dim, fc_out_channels=s["roi_fc"])
        m.bbox_head[0].update(in_channels=dim, feat_channels=dim)
        m.train_cfg[1].rpn_proposal.update(s["rpn_train"])
        m.test_cfg[0].max_per_img = s["test_topk"]
    if deterministic:
        # mmdet asserts both scales > 0: a flip probability of 5e-13 never fires, and box shifts
        # of at most 1e-7 x the box size are below float32 resolution of the coordinates
        m.query_head.dn_cfg.update(label_noise_scale=1e-12, box_noise_scale=1e-7)
        m.train_cfg[1].rpn.sampler.num = 10 ** 6
        m.train_cfg[1].rcnn.sampler.num = 10 ** 6
    return cfg


@torch.no_grad()
def randomize(model: torch.nn.Module, seed: int) -> None:
    """Seeded random values everywhere: constant tensors (norm weights, zero biases, LayerScale,
    ATSS scales, zero-initialised reg layers) get ``value + 0.05 N(0, 1)``, LayerScale gammas a
    value in [0.05, 0.15] (so that the ViT blocks matter), ``level_embeds`` N(0, 1)."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=gen)
        if name.endswith("level_embeds"):
            p.copy_(noise)
        elif name.endswith(("ls1.gamma", "ls2.gamma")):
            p.copy_(0.05 + 0.1 * torch.rand(p.shape, generator=gen))
        elif p.numel() == 1 or float(p.float().std()) == 0.0:
            p.add_(0.05 * noise)
        else:
            p.add_(0.1 * float(p.float().std()) * noise)


def make_inputs(image: int, seed: int, batch: int = 2) -> dict:
    """Smooth random RGB images (uint8) and a few GT boxes per image (xyxy pixels, labels)."""
    gen = torch.Generator().manual_seed(seed + 1)
    low = torch.rand(batch, 3, max(4, image // 16), max(4, image // 16), generator=gen)
    images = torch.nn.functional.interpolate(low, size=(image, image), mode="bilinear",
                                             align_corners=False)
    images = (images * 255).round().clamp(0, 255).to(torch.uint8)
    boxes, labels = [], []
    for n in (3, 5)[:batch]:
        xy = torch.rand(n, 2, generator=gen) * image * 0.6
        wh = (0.15 + 0.35 * torch.rand(n, 2, generator=gen)) * image
        boxes.append(torch.cat([xy, (xy + wh).clamp(max=image - 1)], 1).round())
        labels.append(torch.randint(0, 7, (n,), generator=gen))
    return {"images": images, "gt_boxes": boxes, "gt_labels": labels}


def data_samples(inputs: dict, with_gt: bool):
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData

    out = []
    for i, img in enumerate(inputs["images"]):
        h, w = img.shape[-2:]
        s = DetDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w),
                                        scale_factor=(1.0, 1.0), img_id=i))
        if with_gt:
            s.gt_instances = InstanceData(bboxes=inputs["gt_boxes"][i].float(),
                                          labels=inputs["gt_labels"][i].long())
        out.append(s)
    return out


def preprocess(model, inputs: dict, with_gt: bool, training: bool):
    """The official DetDataPreprocessor on BGR copies of the RGB images (bgr_to_rgb=True)."""
    batch = {"inputs": [img.flip(0) for img in inputs["images"]],
             "data_samples": data_samples(inputs, with_gt)}
    data = model.data_preprocessor(batch, training)
    return data["inputs"], data["data_samples"]


def hook_stages(model, rec: Recorder) -> None:
    rec.hook(model.backbone, "backbone_taps")
    rec.hook(model.neck, "neck")
    rec.hook(model.query_head.transformer.encoder, "encoder_memory",
             pick=lambda a, k, out: out.permute(1, 0, 2))

    head = model.query_head
    forward = head.forward

    def recorded_forward(*args, **kwargs):
        # predict() calls self.forward() directly, past forward hooks: wrap the bound method
        out = forward(*args, **kwargs)
        cls, coords, topk_score, topk_anchor, aux_maps = out
        rec.put("query_head", {"logits": list(cls), "boxes": list(coords),
                               "enc_logits": topk_score, "enc_boxes": topk_anchor,
                               "aux_maps": aux_maps})
        return out
    head.forward = recorded_forward
    rec.restore.append(lambda: delattr(head, "forward"))


@contextlib.contextmanager
def identity_randperm():
    """``torch.randperm(n)`` -> ``arange(n)`` and (without CUDA) ``Tensor.cuda`` -> no-op."""
    randperm, cuda = torch.randperm, torch.Tensor.cuda
    torch.randperm = lambda n, *a, **k: torch.arange(n, device=k.get("device"))
    if not torch.cuda.is_available():
        torch.Tensor.cuda = lambda self, *a, **k: self
    try:
        yield
    finally:
        torch.randperm, torch.Tensor.cuda = randperm, cuda


def skip_sora_svd() -> None:
    """Replace the official SoRA construction-time SVD (of the *random* construction weights,
    rein/peft/sora.py runs it in the constructor) by random factors of the same shapes. The harness overwrites every value with
    seeded random ones anyway, and a full ``torch.linalg.svd`` of the 96 ViT-L matrices takes most
    of an hour on a loaded 2-core CPU; the forward arithmetic is untouched."""
    from rein.peft import sora

    def random_factors(self, init):
        torch.nn.init.kaiming_uniform_(self.lora_A.weight, a=5 ** 0.5)
        torch.nn.init.normal_(self.lora_B.weight, std=self.lora_B.weight.shape[1] ** -0.5)
    sora.Linear.sora_init = random_factors


def run(args: argparse.Namespace) -> None:
    import_official(args.official)
    if args.skip_sora_svd:
        skip_sora_svd()
    from mmdet.registry import MODELS
    from mmengine.registry import init_default_scope

    init_default_scope("mmdet")
    image = args.image or SIZES[args.size]["image"]
    cfg = official_model_cfg(args.official, args.size, image, deterministic=True)
    torch.manual_seed(args.seed)
    model = MODELS.build(cfg.model)
    randomize(model, args.seed)
    if args.dump_keys:
        keys = {k: list(v.shape) for k, v in model.state_dict().items()}
        with open(args.dump_keys, "w") as f:
            json.dump({"source": "ysj9909/SoMA PEFTBackboneCoDETR, " + args.size + " size "
                       "(benchmarks/official/codino_official.py --dump-keys)", "keys": keys},
                      f, indent=0)
            f.write("\n")
        print(f"wrote {len(keys)} keys to {args.dump_keys}")
        if not args.out:
            return
    inputs = make_inputs(image, args.seed, args.batch)
    model.eval()
    rec = Recorder()
    hook_stages(model, rec)
    with torch.no_grad():
        x, samples = preprocess(model, inputs, with_gt=False, training=False)
        results = model.predict(x, samples)
    rec.put("detections", [{"boxes": r.pred_instances.bboxes, "scores": r.pred_instances.scores,
                            "labels": r.pred_instances.labels} for r in results])
    outputs = {"predict": rec.finished()}
    rec.remove()
    timing = {}
    if args.train:
        model.train()
        x, samples = preprocess(model, inputs, with_gt=True, training=True)
        with identity_randperm():
            losses = model.loss(x, samples)
        outputs["losses"] = {k: (v if isinstance(v, torch.Tensor) else torch.stack(list(v)).sum())
                             for k, v in losses.items()}
    if args.time:
        timing = time_official(model, inputs, args.time)
    meta = {"size": args.size, "image": image, "batch": args.batch, "seed": args.seed,
            "skip_sora_svd": bool(args.skip_sora_svd),
            "torch": torch.__version__, "timing": timing}
    save_bundle(args.out, model.state_dict(), inputs, outputs, meta)
    print(f"wrote {args.out}")


def time_official(model, inputs: dict, repeats: int) -> dict:
    """Seconds of one inference and one training step (loss + backward), ``repeats`` each."""
    times = {"inference": [], "train_step": []}
    for rep in range(repeats + 1):  # the first round warms up, untimed
        model.eval()
        t0 = time.perf_counter()
        with torch.no_grad():
            x, samples = preprocess(model, inputs, with_gt=False, training=False)
            model.predict(x, samples)
        if rep:
            times["inference"].append(time.perf_counter() - t0)
        model.train()
        t0 = time.perf_counter()
        x, samples = preprocess(model, inputs, with_gt=True, training=True)
        with identity_randperm():
            losses = model.loss(x, samples)
        total = sum(v if isinstance(v, torch.Tensor) else sum(v) for v in losses.values())
        total.backward()
        model.zero_grad(set_to_none=True)
        if rep:
            times["train_step"].append(time.perf_counter() - t0)
    return times


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--official", required=True, help="SoMA repository root (ysj9909/SoMA)")
    p.add_argument("--size", choices=sorted(SIZES), default="tiny")
    p.add_argument("--image", type=int, default=0, help="image side (default: the size's)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="", help="bundle to write (.pt)")
    p.add_argument("--train", action="store_true", help="also the losses on one batch")
    p.add_argument("--time", type=int, default=0, help="time N inferences / training steps")
    p.add_argument("--skip-sora-svd", action="store_true",
                   help="random adapter factors instead of the construction-time SVD (faster)")
    p.add_argument("--dump-keys", default="", help="write the state dict's names/shapes (JSON)")
    return p.parse_args(argv)


if __name__ == "__main__":
    run(parse_args())
