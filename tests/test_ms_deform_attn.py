"""The shared deformable-attention op against transformers' pure-PyTorch reference port."""
import pytest
import torch
from transformers.models.mask2former import modeling_mask2former as hf_m2f

from soma_d2.layers import MultiScaleDeformableAttention, multi_scale_deformable_attention

SHAPES = [(6, 9), (3, 5), (2, 2)]  # non-square levels


def _inputs(dtype=torch.float32, batch=2, queries=7, heads=4, dim=8, points=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = sum(h * w for h, w in SHAPES)
    value = torch.randn(batch, tokens, heads, dim, generator=g, dtype=dtype)
    # locations in [-0.3, 1.3]: some points fall outside the map and must sample zeros
    loc = torch.rand(batch, queries, heads, len(SHAPES), points, 2, generator=g, dtype=dtype)
    loc = loc * 1.6 - 0.3
    weights = torch.rand(batch, queries, heads, len(SHAPES), points, generator=g, dtype=dtype)
    return value, loc, weights


def test_op_matches_transformers_reference():
    value, loc, weights = _inputs()
    assert ((loc < 0) | (loc > 1)).any()
    ours = multi_scale_deformable_attention(value, torch.tensor(SHAPES), loc, weights)
    ref = hf_m2f.multi_scale_deformable_attention(value, SHAPES, loc, weights)
    assert ours.shape == (2, 7, 4 * 8)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_op_samples_zero_outside_and_exact_at_pixel_centres():
    value, loc, weights = _inputs(batch=1, queries=1, heads=1, dim=1, points=1)
    h, w = SHAPES[0]
    # centre of pixel (row 2, col 4) of level 0; only level 0 weighted
    loc[..., 0, 0, :] = torch.tensor([(4 + 0.5) / w, (2 + 0.5) / h])
    weights.zero_()
    weights[..., 0, 0] = 1.0
    out = multi_scale_deformable_attention(value, SHAPES, loc, weights)
    assert out.item() == pytest.approx(value[0, 2 * w + 4, 0, 0].item(), abs=1e-6)
    loc[..., 0, 0, :] = torch.tensor([1.5, 1.5])
    assert multi_scale_deformable_attention(value, SHAPES, loc, weights).item() == 0.0


def test_op_gradcheck_float64():
    value, loc, weights = _inputs(dtype=torch.float64, batch=1, queries=2, heads=2, dim=2, points=2)
    # keep locations away from pixel-centre kinks where bilinear sampling is not differentiable
    loc = (loc * 0.9 + 0.013).requires_grad_()
    value.requires_grad_()
    weights.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda v, xy, a: multi_scale_deformable_attention(v, SHAPES, xy, a), (value, loc, weights)
    )


def test_module_matches_transformers_module_and_init():
    torch.manual_seed(0)
    ours = MultiScaleDeformableAttention(embed_dim=32, num_heads=4, num_levels=3, num_points=2)
    ref = hf_m2f.Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention(32, 4, 3, 2)
    ref.load_state_dict(ours.state_dict(), strict=True)  # same parameter names and shapes
    # reference init: zero offset weights, radial bias, zero attention logits
    assert ours.sampling_offsets.weight.abs().max() == 0
    bias = ours.sampling_offsets.bias.view(4, 3, 2, 2)
    torch.testing.assert_close(bias[0, 0], torch.tensor([[1.0, 0.0], [2.0, 0.0]]))
    with torch.no_grad():  # random weights so that every term of the module is exercised
        for p in ours.parameters():
            p.normal_(0, 0.3)
    ref.load_state_dict(ours.state_dict())
    tokens = sum(h * w for h, w in SHAPES)
    query, value = torch.randn(2, 5, 32), torch.randn(2, tokens, 32)
    mask = torch.zeros(2, tokens, dtype=torch.bool)
    mask[1, -4:] = True
    for ref_pts in (torch.rand(2, 5, 3, 2), torch.rand(2, 5, 3, 4)):
        got = ours(query, ref_pts, value, torch.tensor(SHAPES), value_padding_mask=mask)
        want = ref(query, attention_mask=mask, encoder_hidden_states=value,
                   reference_points=ref_pts, spatial_shapes_list=SHAPES)[0]
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_bad_shapes_name_the_problem():
    value, loc, weights = _inputs()
    with pytest.raises(ValueError, match="levels"):
        multi_scale_deformable_attention(value, SHAPES[:2], loc, weights)
    with pytest.raises(ValueError, match="tokens"):
        multi_scale_deformable_attention(value, [(6, 9), (3, 5), (2, 3)], loc, weights)
    with pytest.raises(ValueError, match="divisible"):
        MultiScaleDeformableAttention(embed_dim=30, num_heads=4)
