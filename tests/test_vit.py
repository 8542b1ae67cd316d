"""DinoVisionTransformer: structure, padding, pos-embed interpolation, freezing, checkpointing.

Numerical references are timm's DINOv2 ViT (random weights) and a NumPy re-implementation of
PyTorch's bicubic kernel for DINOv2's scale-factor interpolation convention.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import timm
import torch
from torch import nn
from vit_helpers import randomize_vit

from soma_d2.checkpoint import convert_dinov2_state_dict, expected_vit_keys
from soma_d2.layers.vit_tensors import interpolate_pos_embed
from soma_d2.modeling.vit import VIT_ARCHS, DinoVisionTransformer, build_dinov2_vit


@pytest.fixture(scope="module")
def timm_reg4():
    torch.manual_seed(0)
    model = timm.create_model(
        "vit_small_patch14_reg4_dinov2", pretrained=False, img_size=70, depth=2,
        embed_dim=64, num_heads=4, dynamic_img_size=True,
    )
    return randomize_vit(model)


def _ours_from(state_dict, **kwargs) -> DinoVisionTransformer:
    conversion = convert_dinov2_state_dict(state_dict)
    model = DinoVisionTransformer(**{**conversion.config, "num_heads": 4, **kwargs})
    model.load_state_dict(conversion.state_dict)
    return model.eval()


def test_arch_table_matches_dinov2_sizes():
    expected = {"vit_s": (384, 12, 6), "vit_b": (768, 12, 12), "vit_l": (1024, 24, 16),
                "vit_g": (1536, 40, 24)}
    for arch, (dim, depth, heads) in expected.items():
        with torch.device("meta"):
            model = build_dinov2_vit(arch)
        assert (model.embed_dim, model.depth, model.num_heads) == (dim, depth, heads)
        assert model.pos_embed.shape == (1, 1 + 37 * 37, dim)
        assert model.out_indices == (depth - 1,)
    with torch.device("meta"):
        giant = build_dinov2_vit("vit_g")
    # DINOv2's SwiGLUFFNFused: w12 is 1536 -> 2 * 4096, w3 is 4096 -> 1536.
    assert giant.blocks[0].mlp.fc1.weight.shape == (8192, 1536)
    assert giant.blocks[0].mlp.fc2.weight.shape == (1536, 4096)
    assert VIT_ARCHS["vit_g"]["ffn_layer"] == "swiglu"
    with pytest.raises(ValueError, match="vit_xl"):
        build_dinov2_vit("vit_xl")


@pytest.mark.parametrize(
    "config",
    [
        dict(embed_dim=32, depth=2, num_heads=4, img_size=56),
        dict(embed_dim=48, depth=3, num_heads=4, img_size=(42, 70), ffn_layer="swiglu",
             num_register_tokens=4, patch_size=7),
        dict(embed_dim=32, depth=1, num_heads=2, qkv_bias=False, layer_scale_init=None,
             ffn_hidden_dim=40, img_size=30, patch_size=16),
        dict(embed_dim=24, depth=2, num_heads=3, mlp_ratio=2.0, in_chans=1, img_size=(33, 17),
             num_register_tokens=1, patch_size=8),
    ],
)
def test_expected_keys_match_model(config):
    # the loader's written-out schema (soma_d2.checkpoint.dinov2.vit_schema) is the model's,
    # names, shapes and order
    model = DinoVisionTransformer(**config)
    actual = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    assert list(expected_vit_keys(config).items()) == actual
    names = {n for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    assert {"blocks.0.attn.q", "blocks.0.attn.k", "blocks.0.attn.v", "blocks.0.attn.proj",
            "blocks.0.mlp.fc1", "blocks.0.mlp.fc2"} <= names


def test_block_maps_match_timm_intermediate_layers(timm_reg4):
    ours = _ours_from(timm_reg4.state_dict(), out_indices=(0, 1))
    x = torch.randn(2, 3, 70, 70)
    with torch.no_grad():
        maps = ours(x)
        reference = timm_reg4.get_intermediate_layers(x, n=[0, 1], reshape=True, norm=True)
    assert sorted(maps) == ["block0", "block1"]
    for key, ref in zip(("block0", "block1"), reference):
        assert maps[key].shape == (2, 64, 5, 5)
        assert (maps[key] - ref).abs().max().item() <= 1e-4


@pytest.mark.parametrize("size", [(98, 84), (42, 56)])
def test_pos_embed_interpolation_matches_timm_dynamic_size(timm_reg4, size):
    # timm resamples by output size with antialias=True (PIL cubic); the conversion's config
    # carries that convention, so the outputs must agree for any input size.
    ours = _ours_from(timm_reg4.state_dict())
    assert (ours.interpolate_offset, ours.interpolate_antialias) == (0.0, True)
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        diff = (ours.forward_features(x) - timm_reg4.forward_features(x)).abs().max().item()
    print(f"pos-embed interpolation {size} vs timm dynamic_img_size: max abs diff {diff:.2e}")
    assert diff <= 1e-4
    # DINOv2's default convention (offset 0.1, no antialias) is a different resampling.
    default = _ours_from(timm_reg4.state_dict(), interpolate_offset=0.1,
                         interpolate_antialias=False)
    with torch.no_grad():
        gap = (default.forward_features(x) - timm_reg4.forward_features(x)).abs().max().item()
    assert gap > 1e-3


def _torch_bicubic_1d(values: np.ndarray, out_len: int, scale: float) -> np.ndarray:
    """PyTorch's bicubic (A=-0.75, align_corners=False, given scale factor), along axis 0."""
    def cubic(t: float) -> np.ndarray:
        a = -0.75
        x = np.array([t + 1, t, 1 - t, 2 - t])
        near = ((a + 2) * x - (a + 3)) * x * x + 1
        far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
        return np.where(x <= 1, near, far)

    out = np.empty((out_len,) + values.shape[1:])
    for i in range(out_len):
        real = (i + 0.5) / scale - 0.5
        base = math.floor(real)
        weights = cubic(real - base)
        idx = np.clip(np.arange(base - 1, base + 3), 0, len(values) - 1)
        out[i] = np.tensordot(weights, values[idx], axes=(0, 0))
    return out


def test_dinov2_offset_convention_matches_reference_bicubic():
    torch.manual_seed(0)
    old, new, dim, offset = 5, 7, 3, 0.1
    pos = torch.randn(1, 1 + old * old, dim)
    result = interpolate_pos_embed(pos, new, interpolate_offset=offset)
    grid = pos[0, 1:].reshape(old, old, dim).double().numpy()
    scale = (new + offset) / old
    ref = _torch_bicubic_1d(_torch_bicubic_1d(grid, new, scale).swapaxes(0, 1), new, scale)
    ref = ref.swapaxes(0, 1).reshape(new * new, dim)
    assert torch.equal(result[0, 0], pos[0, 0])
    assert np.abs(result[0, 1:].numpy() - ref).max() <= 1e-5
    # The size-based convention (offset 0) samples a different grid.
    plain = interpolate_pos_embed(pos, new)
    assert (plain - result).abs().max() > 1e-3


def test_non_multiple_inputs_are_zero_padded():
    torch.manual_seed(0)
    model = DinoVisionTransformer(img_size=56, patch_size=14, embed_dim=32, depth=2, num_heads=4,
                                  out_indices=(0, 1), interpolate_offset=0.0).eval()
    x = torch.randn(1, 3, 45, 60)
    padded = torch.nn.functional.pad(x, (0, 10, 0, 11))
    with torch.no_grad():
        maps, ref = model(x), model(padded)
    assert maps["block1"].shape == (1, 32, math.ceil(45 / 14), math.ceil(60 / 14))
    assert torch.equal(maps["block1"], ref["block1"])


def test_stored_grid_input_skips_interpolation():
    model = DinoVisionTransformer(img_size=(28, 42), patch_size=14, embed_dim=16, depth=1,
                                  num_heads=2)
    assert model._pos_embed_for((2, 3)) is model.pos_embed
    assert model._pos_embed_for((3, 3)).shape == (1, 10, 16)


def test_qkv_are_called_as_modules():
    torch.manual_seed(0)
    model = DinoVisionTransformer(img_size=28, embed_dim=16, depth=1, num_heads=2,
                                  layer_scale_init=1.0).eval()
    x = torch.randn(1, 3, 28, 28)
    with torch.no_grad():
        before = model.forward_features(x)
        for name in ("q", "k", "v", "proj"):
            original = getattr(model.blocks[0].attn, name)
            setattr(model.blocks[0].attn, name, nn.Sequential(original, nn.Identity()))
        assert torch.equal(model.forward_features(x), before)
        model.blocks[0].attn.v = nn.Sequential(model.blocks[0].attn.v, nn.Tanh())
        assert not torch.allclose(model.forward_features(x), before)


def test_drop_path_rates_increase_linearly():
    model = DinoVisionTransformer(img_size=28, embed_dim=16, depth=5, num_heads=2,
                                  drop_path_rate=0.2)
    rates = [block.drop_path.drop_prob for block in model.blocks]
    assert rates == pytest.approx(np.linspace(0, 0.2, 5).tolist())
    x = torch.randn(8, 3, 28, 28)
    model.train()
    assert not torch.equal(model.forward_features(x), model.forward_features(x))
    model.eval()
    assert torch.equal(model.forward_features(x), model.forward_features(x))


def _grads(model: DinoVisionTransformer, x: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    sum(m.square().sum() for m in model(x).values()).backward()
    return {n: p.grad for n, p in model.named_parameters()}


def test_frozen_blocks_and_activation_checkpointing():
    torch.manual_seed(0)
    kwargs = dict(img_size=28, embed_dim=16, depth=4, num_heads=2, out_indices=(1, 3))
    reference = DinoVisionTransformer(**kwargs).train()
    frozen = DinoVisionTransformer(**kwargs, frozen_blocks=2, use_act_checkpoint=True).train()
    frozen.load_state_dict(reference.state_dict())
    x = torch.randn(2, 3, 28, 28)
    ref_grads, grads = _grads(reference, x), _grads(frozen, x)
    for name, grad in grads.items():
        if name.startswith(("blocks.0.", "blocks.1.", "patch_embed", "cls_token", "pos_embed")):
            assert grad is None, name
        elif name.startswith(("blocks.2.", "blocks.3.")):
            assert grad is not None, name
    # Blocks after the frozen ones get exactly the gradients of the unfrozen model, with or
    # without activation checkpointing (they do not depend on upstream gradients).
    for name in ("blocks.2.attn.q.weight", "blocks.3.mlp.fc2.weight", "blocks.3.ls1.gamma"):
        assert torch.allclose(grads[name], ref_grads[name], atol=1e-6)


def test_activation_checkpointing_keeps_gradients():
    torch.manual_seed(0)
    kwargs = dict(img_size=28, embed_dim=16, depth=2, num_heads=2)
    plain = DinoVisionTransformer(**kwargs).train()
    ckpt = DinoVisionTransformer(**kwargs, use_act_checkpoint=True).train()
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 28, 28)
    a, b = _grads(plain, x), _grads(ckpt, x)
    assert all(torch.allclose(a[n], b[n], atol=1e-6) for n in a if a[n] is not None)
    assert a["patch_embed.proj.weight"] is not None


def test_mask_token_replaces_masked_patches():
    torch.manual_seed(0)
    model = DinoVisionTransformer(img_size=28, embed_dim=16, depth=1, num_heads=2).eval()
    with torch.no_grad():
        model.mask_token.normal_()
    x = torch.randn(1, 3, 28, 28)
    masks = torch.tensor([[True, False, False, False]])
    tokens, _ = model.prepare_tokens(x, masks)
    expected = model.mask_token[0] + model.pos_embed[0, 1]
    assert torch.allclose(tokens[0, 1], expected)


def test_out_indices_validation():
    model = DinoVisionTransformer(img_size=28, embed_dim=16, depth=4, num_heads=2,
                                  out_indices=(-1, 1))
    assert model.out_indices == (1, 3)
    with pytest.raises(ValueError, match="out_indices entry 4"):
        DinoVisionTransformer(img_size=28, embed_dim=16, depth=4, num_heads=2, out_indices=(4,))
