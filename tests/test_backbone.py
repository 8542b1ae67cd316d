"""The Detectron2 backbone: pretrained weights loaded before the SoMA decomposition, checkpoint
round trips through Detectron2's checkpointer, refusal of raw/merged weights, modes, and a tiny
Faster R-CNN that trains, infers and merges."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import timm
import torch
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from soma_d2.checkpoint import load_dinov2_weights
from soma_d2.checkpoint.adapter import merged_state_dict
from soma_d2.checkpoint.checkpointer import SoMACheckpointer
from soma_d2.config import build_cfg
from soma_d2.modeling import DinoVisionTransformer
from soma_d2.soma import SoMALinear

TINY = "configs/test/tiny_soma_det.yaml"


@pytest.fixture(scope="module")
def timm_weights(tmp_path_factory) -> str:
    """A timm DINOv2-S-shaped model (64 wide, 4 blocks) with random weights and layer-scales."""
    torch.manual_seed(0)
    model = timm.create_model(
        "vit_small_patch14_dinov2", pretrained=False, img_size=112, embed_dim=64, depth=4,
        num_heads=2,
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma"):
                p.copy_(torch.rand_like(p) * 0.5 + 0.5)
            elif "pos_embed" in name or "cls_token" in name:
                p.copy_(torch.randn_like(p) * 0.02)
    path = str(tmp_path_factory.mktemp("w") / "timm_dinov2_tiny.pth")
    torch.save(model.state_dict(), path)
    return path


def _cfg(*opts: str, pretrained: str = ""):
    base = ["INPUT.IMAGE_SIZE", "112"]
    if pretrained:
        base += ["MODEL.SOMA.PRETRAINED", pretrained]
    return build_cfg(TINY, base + list(opts))


def _minor_reconstruction(w: np.ndarray, r: int) -> np.ndarray:
    u, s, vt = np.linalg.svd(w.astype(np.float64), full_matrices=False)
    return (u[:, -r:] * s[-r:]) @ vt[-r:]


def test_adapters_hold_minor_components_of_the_pretrained_weights(timm_weights):
    cfg = _cfg(pretrained=timm_weights)
    torch.manual_seed(123)  # any random init of the constructor must not matter
    model = build_model(cfg)
    net = model.backbone.net
    pretrained = load_dinov2_weights(timm_weights, patch_size=16, image_size=128)
    layers = {n: m for n, m in net.named_modules() if isinstance(m, SoMALinear)}
    assert len(layers) == 2 * 6  # blocks 2 and 3, six targets each
    for name, layer in layers.items():
        w = pretrained[f"{name}.weight"].numpy()
        ba = (layer.scaling * layer.B @ layer.A).detach().double().numpy()
        ref = _minor_reconstruction(w, layer.rank)
        assert np.linalg.norm(ba - ref) <= 1e-5 * np.linalg.norm(ref) + 1e-7, name

    plain = DinoVisionTransformer(**_plain_kwargs(net))
    plain.load_state_dict(pretrained, strict=False)
    x = torch.randn(2, 3, 128, 128)
    net.eval()
    plain.eval()
    with torch.no_grad():
        a, b = net.forward_features(x), plain.forward_features(x)
    assert (a - b).abs().max().item() <= 1e-5 * b.abs().max().item()


def _plain_kwargs(net) -> dict:
    return dict(img_size=128, patch_size=16, embed_dim=64, depth=4, num_heads=2,
                out_indices=tuple(net.out_indices))


def test_full_checkpoint_round_trip_and_refusals(timm_weights, tmp_path):
    cfg = _cfg(pretrained=timm_weights)
    model = build_model(cfg)
    with torch.no_grad():  # pretend training moved the factors
        for m in model.modules():
            if isinstance(m, SoMALinear):
                m.A.add_(0.01 * torch.randn_like(m.A))
                m.B.add_(0.01 * torch.randn_like(m.B))
    SoMACheckpointer(model, str(tmp_path)).save("model_test")
    path = str(tmp_path / "model_test.pth")

    # A model decomposed from *random* weights loads the full checkpoint exactly.
    fresh = build_model(_cfg("MODEL.WEIGHTS", path))
    SoMACheckpointer(fresh).load(path)
    ref = model.state_dict()
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, ref[k]), k

    with pytest.raises(ValueError, match="MODEL.SOMA.PRETRAINED"):
        SoMACheckpointer(build_model(_cfg())).load(timm_weights)

    merged = str(tmp_path / "merged.pth")
    torch.save({"model": merged_state_dict(copy.deepcopy(model))}, merged)
    with pytest.raises(ValueError, match="MODE frozen"):
        SoMACheckpointer(build_model(_cfg())).load(merged)
    frozen = build_model(_cfg("MODEL.SOMA.MODE", "frozen"))
    SoMACheckpointer(frozen).load(merged)
    x = torch.randn(1, 3, 112, 112)
    model.eval()
    frozen.eval()
    with torch.no_grad():
        a = model.backbone(x)
        b = frozen.backbone(x)
    for k in a:
        assert (a[k] - b[k]).abs().max().item() <= 1e-4 * a[k].abs().max().item(), k


@pytest.mark.parametrize("mode", ["soma", "principal", "lora", "released", "full_finetune", "frozen"])
def test_modes_set_the_trainable_parameters(mode):
    model = build_model(_cfg("MODEL.SOMA.MODE", mode))
    net = model.backbone.net
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    adapters = {n for n in trainable if n.endswith((".A", ".B"))}
    if mode == "frozen":
        assert not trainable
    elif mode == "full_finetune":
        assert trainable == {n for n, _ in net.named_parameters()}
    else:
        assert len(adapters) == 2 * 6 * 2
        assert all(int(n.split(".")[1]) >= 2 for n in trainable if n.startswith("blocks."))
        assert not any(("norm" in n or "pos_embed" in n or "patch_embed" in n) for n in trainable)
        assert "mask_token" in trainable
    assert all(p.requires_grad for n, p in model.named_parameters() if not n.startswith("backbone.net"))


def _batch(n: int = 2) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        img = torch.full((3, 112, 112), 40.0)
        img[:, 20 + i * 10: 70 + i * 10, 30:90] = 220.0
        inst = Instances((112, 112))
        inst.gt_boxes = Boxes(torch.tensor([[30.0, 20.0 + i * 10, 90.0, 70.0 + i * 10]]))
        inst.gt_classes = torch.tensor([2])
        out.append({"image": img + torch.rand(3, 112, 112, generator=g) * 5, "height": 112,
                    "width": 112, "instances": inst})
    return out


def test_tiny_detector_trains_infers_and_merges():
    torch.manual_seed(0)
    model = build_model(_cfg())
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3)
    batch = _batch()
    losses = []
    model.train()
    with EventStorage(0):
        for _ in range(12):
            loss = sum(model(batch).values())
            assert torch.isfinite(loss)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    assert np.mean(losses[-3:]) < np.mean(losses[:3])

    model.eval()
    inputs = [{k: v for k, v in d.items() if k != "instances"} for d in batch]
    with torch.no_grad():
        out = model(inputs)
    assert isinstance(out[0]["instances"], Instances)
    assert len(out[0]["instances"]) > 0

    merged = copy.deepcopy(model)
    merged_state_dict(merged)  # merges in place
    assert not any(isinstance(m, SoMALinear) for m in merged.modules())
    with torch.no_grad():
        out2 = merged(inputs)
    a, b = out[0]["instances"], out2[0]["instances"]
    assert len(a) == len(b)
    assert torch.equal(a.pred_classes, b.pred_classes)
    assert torch.allclose(a.pred_boxes.tensor, b.pred_boxes.tensor, atol=1e-3)
    assert torch.allclose(a.scores, b.scores, atol=1e-4)


def test_raw_tap_backbone_matches_timm_intermediates():
    """soma_d2's raw-tap backbone (the heads' features) against timm's own DINOv2 ViT: each map is
    timm's un-normalised block output (`forward_intermediates(norm=False)`), resized bilinearly by
    its factor, under the names and strides the heads read."""
    import torch.nn.functional as F

    from soma_d2.checkpoint import convert_dinov2_state_dict
    from soma_d2.modeling import RawTapBackbone

    torch.manual_seed(0)
    ref = timm.create_model("vit_small_patch14_dinov2", pretrained=False, patch_size=16,
                            img_size=128, embed_dim=64, depth=4, num_heads=2).eval()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if name.endswith("gamma"):
                p.copy_(torch.rand_like(p) * 0.5 + 0.5)
    conversion = convert_dinov2_state_dict(ref.state_dict(), source="timm")
    vit = DinoVisionTransformer(**{**conversion.config, "num_heads": 2,
                                   "out_indices": [0, 1, 2, 3]})
    vit.load_state_dict(conversion.state_dict)
    backbone = RawTapBackbone(vit.eval(), [4.0, 2.0, 1.0, 0.5])
    assert {k: (s.channels, s.stride) for k, s in backbone.output_shape().items()} == {
        "res2": (64, 4), "res3": (64, 8), "res4": (64, 16), "res5": (64, 32)}
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        ours = backbone(x)
        taps = ref.forward_intermediates(x, indices=[0, 1, 2, 3], norm=False,
                                         output_fmt="NCHW", intermediates_only=True)
    for (name, got), tap, scale in zip(ours.items(), taps, (4.0, 2.0, 1.0, 0.5)):
        want = tap if scale == 1.0 else F.interpolate(tap, scale_factor=scale, mode="bilinear",
                                                      align_corners=False)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5, msg=name)
    normed = vit(x)["block3"]  # the ViT's own forward applies the final norm: a different map
    assert not torch.allclose(normed, taps[3], atol=1e-3)
    with pytest.raises(ValueError, match="MODEL.VIT.TAP_SCALES"):
        RawTapBackbone(vit, [4.0, 2.0, 1.0])
    with pytest.raises(ValueError, match="powers of two"):
        RawTapBackbone(vit, [3.0, 2.0, 1.0, 0.5])
