"""Activation checkpointing (MODEL.VIT.CHECKPOINT_BLOCKS, MODEL.CODINO.ENCODER_CHECKPOINT):
the same losses and gradients as without it, checked against the plain model; recomputation
really happens (checkpointed layers run twice per training step, the autograd graph saves fewer
bytes); and under eval or torch.no_grad it is a plain call."""
from __future__ import annotations

import os

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage
from soma_codino.transformer import DeformableEncoder

from soma_d2.config import build_cfg
from soma_d2.modeling import DinoV3VisionTransformer, DinoVisionTransformer
from soma_d2.modeling.checkpointing import checkpoint_call, resolve_checkpoint_count

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_CODINO = os.path.join(REPO, "configs", "test", "tiny_codino.yaml")
VIT = dict(img_size=32, patch_size=8, embed_dim=32, depth=5, num_heads=2, out_indices=(1, 3, 4),
           drop_path_rate=0.2)


def _count_calls(layers) -> list[int]:
    calls = [0] * len(layers)
    for i, layer in enumerate(layers):
        layer.register_forward_pre_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
    return calls


def _saved_bytes(fn) -> int:
    """Bytes of the tensors autograd saves for backward while `fn()` runs."""
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total[0]


def _vit_step(model, x, seed=0):
    torch.manual_seed(seed)  # drop path draws random numbers: the same stream for both runs
    model.zero_grad(set_to_none=True)
    loss = sum((f * f).mean() for f in model(x).values())
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("count, expected", [(1, [2]), (2, [2, 3]), (-1, [2, 3, 4])])
def test_vit_checkpoint_blocks_same_loss_and_gradients(count, expected):
    torch.manual_seed(0)
    plain = DinoVisionTransformer(**VIT, frozen_blocks=2).train()
    ckpt = DinoVisionTransformer(**VIT, frozen_blocks=2, checkpoint_blocks=count).train()
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 32, 32)
    calls = _count_calls(ckpt.blocks)
    loss_a, grads_a = _vit_step(plain, x)
    loss_b, grads_b = _vit_step(ckpt, x)
    # checkpointed blocks (the first `count` trainable ones) run again in backward
    assert [i for i, c in enumerate(calls) if c == 2] == expected
    assert all(c == 1 for i, c in enumerate(calls) if i not in expected)
    assert torch.equal(loss_a, loss_b)
    assert grads_a.keys() == grads_b.keys()
    for name, grad in grads_a.items():
        if name.startswith(("blocks.0.", "blocks.1.", "patch_embed", "pos_embed", "cls_token")):
            assert grad is None and grads_b[name] is None, name  # frozen: no graph at all
        elif grad is not None:
            torch.testing.assert_close(grads_b[name], grad, rtol=1e-6, atol=1e-7, msg=name)
    assert sum(g is not None for g in grads_a.values()) > 0



@pytest.mark.parametrize("count", [1, -1])
def test_dinov3_checkpoint_blocks_same_loss_and_gradients(count):
    """The DINOv3 family takes the same MODEL.VIT.CHECKPOINT_BLOCKS through the same helper."""
    kwargs = dict(patch_size=8, embed_dim=32, depth=4, num_heads=2, out_indices=(1, 3),
                  num_register_tokens=2, frozen_blocks=1)
    torch.manual_seed(0)
    plain = DinoV3VisionTransformer(**kwargs).train()
    ckpt = DinoV3VisionTransformer(**kwargs, checkpoint_blocks=count).train()
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 32, 32)
    calls = _count_calls(ckpt.blocks)
    loss_a, grads_a = _vit_step(plain, x)
    loss_b, grads_b = _vit_step(ckpt, x)
    assert [i for i, c in enumerate(calls) if c == 2] == ([1] if count == 1 else [1, 2, 3])
    assert torch.equal(loss_a, loss_b)
    checked = 0
    for name, grad in grads_a.items():
        if grad is not None:
            torch.testing.assert_close(grads_b[name], grad, rtol=1e-6, atol=1e-7, msg=name)
            checked += 1
    assert checked > 0

def test_vit_checkpointing_saves_activation_memory():
    torch.manual_seed(0)
    plain = DinoVisionTransformer(**VIT, frozen_blocks=2).train()
    ckpt = DinoVisionTransformer(**VIT, frozen_blocks=2, checkpoint_blocks=-1).train()
    x = torch.randn(2, 3, 32, 32)
    saved_plain = _saved_bytes(lambda: plain(x))
    saved_ckpt = _saved_bytes(lambda: ckpt(x))
    assert saved_ckpt < saved_plain / 4


def test_vit_checkpointing_is_a_no_op_in_eval_and_no_grad():
    torch.manual_seed(0)
    plain = DinoVisionTransformer(**VIT).eval()
    ckpt = DinoVisionTransformer(**VIT, checkpoint_blocks=-1)
    ckpt.load_state_dict(plain.state_dict())
    calls = _count_calls(ckpt.blocks)
    x = torch.randn(1, 3, 32, 32)
    ckpt.eval()
    out_eval = ckpt(x)
    ckpt.train()
    with torch.no_grad():
        out_nograd = ckpt(x)
    assert calls == [2] * 5  # one plain call per block in each forward, never through checkpoint
    expected = plain(x)
    for key, value in expected.items():
        assert torch.equal(out_eval[key], value)
    ckpt.eval()
    assert _saved_bytes(lambda: ckpt(x)) == _saved_bytes(lambda: plain(x))  # eval: plain graph
    del out_nograd


def test_use_act_checkpoint_means_all_trainable_blocks():
    model = DinoVisionTransformer(**VIT, frozen_blocks=3, use_act_checkpoint=True)
    assert model.checkpoint_blocks == 2 and list(model._checkpointed) == [3, 4]
    model.set_checkpoint_blocks(1)
    assert model.checkpoint_blocks == 1 and list(model._checkpointed) == [3]
    with pytest.raises(ValueError, match="checkpoint_blocks=3 must be an integer in \\[-1, 2\\]"):
        DinoVisionTransformer(**VIT, frozen_blocks=3, checkpoint_blocks=3)
    with pytest.raises(ValueError, match="contradicts checkpoint_blocks=1"):
        DinoVisionTransformer(**VIT, frozen_blocks=3, use_act_checkpoint=True, checkpoint_blocks=1)


def test_resolve_checkpoint_count():
    assert resolve_checkpoint_count(-1, 7) == 7
    assert resolve_checkpoint_count(0, 7) == 0 and resolve_checkpoint_count(3, 7) == 3
    for bad in (-2, 8, 1.5):
        with pytest.raises(ValueError, match="KEY="):
            resolve_checkpoint_count(bad, 7, "KEY")


def test_checkpoint_call_passes_keywords():
    layer = torch.nn.Linear(3, 3)
    x = torch.randn(2, 3, requires_grad=True)
    torch.testing.assert_close(checkpoint_call(layer, input=x), layer(x))


def _encoder_inputs(dim=32, shapes=((8, 8), (4, 4), (2, 2))):
    gen = torch.Generator().manual_seed(1)
    tokens = sum(h * w for h, w in shapes)
    x = torch.randn(2, tokens, dim, generator=gen)
    pos = torch.randn(2, tokens, dim, generator=gen)
    return x, pos, list(shapes)


def test_codino_encoder_checkpoint_same_output_and_gradients():
    torch.manual_seed(0)
    args = (3, 32, 4, 3, 2, 64)
    plain = DeformableEncoder(*args).train()
    ckpt = DeformableEncoder(*args, checkpoint_layers=2).train()
    ckpt.load_state_dict(plain.state_dict())
    calls = _count_calls(ckpt.layers)
    x, pos, shapes = _encoder_inputs()
    results = []
    for model in (plain, ckpt):
        xi = x.clone().requires_grad_(True)
        out = model(xi, pos, shapes)
        out.square().mean().backward()
        results.append((out.detach(), xi.grad, {n: p.grad for n, p in model.named_parameters()}))
    assert calls == [2, 2, 1]
    assert torch.equal(results[0][0], results[1][0])
    torch.testing.assert_close(results[1][1], results[0][1], rtol=1e-6, atol=1e-7)
    for name, grad in results[0][2].items():
        torch.testing.assert_close(results[1][2][name], grad, rtol=1e-6, atol=1e-7, msg=name)
    assert (_saved_bytes(lambda: ckpt(x, pos, shapes))
            < _saved_bytes(lambda: plain(x, pos, shapes)))
    before = list(calls)
    with torch.no_grad():
        ckpt(x, pos, shapes)
    assert [c - b for c, b in zip(calls, before)] == [1, 1, 1]


def _detector_losses(opts):
    cfg = build_cfg(TINY_CODINO, ["DATASETS.TRAIN", "()", "DATASETS.TEST", "()", *opts])
    torch.manual_seed(0)
    model = build_model(cfg).train()
    side = int(cfg.INPUT.IMAGE_SIZE)
    gen = torch.Generator().manual_seed(1)
    batch = []
    for _ in range(2):
        inst = Instances((side, side))
        inst.gt_boxes = Boxes(torch.tensor([[10.0, 12.0, 60.0, 70.0], [64.0, 30.0, 120.0, 90.0]]))
        inst.gt_classes = torch.tensor([0, 3])
        batch.append({"image": torch.rand(3, side, side, generator=gen) * 255,
                      "instances": inst, "image_size": (side, side)})
    torch.manual_seed(2)  # denoising queries and sampling: the same draws for both runs
    with EventStorage(0):
        losses = model(batch)
    sum(losses.values()).backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in losses.items()}, grads, model


def test_codino_detector_same_losses_and_gradients_with_checkpointing():
    losses_a, grads_a, _ = _detector_losses([])
    losses_b, grads_b, model = _detector_losses(["MODEL.VIT.CHECKPOINT_BLOCKS", "-1",
                                                 "MODEL.CODINO.ENCODER_CHECKPOINT", "-1"])
    assert model.backbone.net.checkpoint_blocks == 2  # DEPTH 4, START_BLOCK 2
    assert model.query_head.encoder.checkpoint_layers == 1
    assert losses_a.keys() == losses_b.keys()
    for key, value in losses_a.items():
        torch.testing.assert_close(losses_b[key], value, rtol=1e-6, atol=1e-7, msg=key)
    assert grads_a.keys() == grads_b.keys() and any("backbone.net.blocks.3" in n for n in grads_a)
    for name, grad in grads_a.items():
        torch.testing.assert_close(grads_b[name], grad, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("opts, match", [
    (("MODEL.VIT.CHECKPOINT_BLOCKS", "3"), "CHECKPOINT_BLOCKS=3 exceeds the 2 trainable blocks"),
    (("MODEL.VIT.CHECKPOINT_BLOCKS", "-2"), "CHECKPOINT_BLOCKS=-2 must be -1"),
    (("MODEL.VIT.USE_ACT_CHECKPOINT", "True", "MODEL.VIT.CHECKPOINT_BLOCKS", "1"),
     "USE_ACT_CHECKPOINT=True .* contradicts MODEL.VIT.CHECKPOINT_BLOCKS=1"),
    (("MODEL.CODINO.ENCODER_CHECKPOINT", "2"), "ENCODER_CHECKPOINT=2 must be in \\[-1, ENC_LAYERS=1"),
])
def test_bad_checkpoint_keys_fail_naming_the_key(opts, match):
    with pytest.raises(ValueError, match=match):
        build_model(build_cfg(TINY_CODINO, ["DATASETS.TRAIN", "()", "DATASETS.TEST", "()",
                                            *opts]))


def test_checkpoint_benchmark_smoke():
    from benchmarks.harness.checkpointing import checkpoint_opts, checkpoint_table
    from benchmarks.harness.runner import run_benchmarks

    assert checkpoint_opts("L", "cpu", "off")[:2] == ("INPUT.IMAGE_SIZE", "256")
    assert checkpoint_opts("L", "cuda", "vit") == ("MODEL.VIT.CHECKPOINT_BLOCKS", "-1")
    result = run_benchmarks(["checkpoint"], size="T", repeats=1)["results"]["checkpoint"]
    rows = {r["method"]: r for r in result["rows"]}
    assert list(rows) == ["off", "vit", "vit_enc"] and rows["off"]["mem_ratio"] == 1.0
    assert len({r["trainable_params"] for r in rows.values()}) == 1  # same model, same params
    assert all(r["peak_mem_mib"] > 0 and r["stats"]["median"] > 0 for r in rows.values())
    assert "ENCODER_CHECKPOINT -1" in checkpoint_table(result)


def test_isolated_child_that_dies_raises_instead_of_hanging():
    from benchmarks.harness.measure import run_isolated

    assert run_isolated(os.getpid) != os.getpid()
    with pytest.raises(RuntimeError, match="died"):
        run_isolated(os.abort)
