"""Mask2Former head vs transformers' port (the independent reference).

With weights converted by `convert_transformers_mask2former` and the same multi-scale features,
our pixel decoder + masked-attention decoder must give transformers' class and mask logits for every
prediction set (initial queries + each layer) to 1e-4; on the same predictions and targets, with
the same random points (same seed, same draw order), matching and the weighted losses must equal
transformers' `Mask2FormerLoss` times its weight dict.
"""
from __future__ import annotations

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from soma_mask2former import Mask2FormerHead, convert_transformers_mask2former
from soma_mask2former.criterion import SetCriterion, semantic_targets
from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, SwinConfig

from soma_d2.config import add_soma_config

NUM_CLASSES, DIM, QUERIES, HEADS, DEC_LAYERS = 5, 64, 12, 4, 4
CHANNELS = [16, 32, 64, 128]  # the tiny Swin's stage widths, strides 4..32


def _hf_model() -> Mask2FormerForUniversalSegmentation:
    backbone = SwinConfig(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1],
                          window_size=4, out_features=["stage1", "stage2", "stage3", "stage4"])
    config = Mask2FormerConfig(
        backbone_config=backbone, num_labels=NUM_CLASSES, feature_size=DIM, mask_feature_size=DIM,
        hidden_dim=DIM, encoder_feedforward_dim=96, dim_feedforward=80, encoder_layers=2,
        decoder_layers=DEC_LAYERS + 1, num_attention_heads=HEADS, num_queries=QUERIES,
        train_num_points=300, use_auxiliary_loss=True,
    )
    torch.manual_seed(0)
    model = Mask2FormerForUniversalSegmentation(config).eval()
    with torch.no_grad():  # every weight random (the default init zeroes MSDA's weights)
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
            else:  # unit-scale activations, so that 1e-4 is a tight tolerance
                gain = 0.25 if "mask_embedder" in name else 1.0
                p.copy_(gain * torch.randn_like(p) / max(1, p[0].numel()) ** 0.5)
    return model


def _our_head() -> Mask2FormerHead:
    cfg = add_soma_config(get_cfg())
    m = cfg.MODEL.MASK2FORMER
    m.HIDDEN_DIM, m.MASK_DIM, m.NUM_QUERIES, m.NUM_HEADS = DIM, DIM, QUERIES, HEADS
    m.ENC_LAYERS, m.ENC_FFN_DIM, m.DEC_LAYERS, m.DEC_FFN_DIM = 2, 96, DEC_LAYERS, 80
    m.TRAIN_NUM_POINTS = 300
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = NUM_CLASSES
    shapes = {f"res{i + 2}": ShapeSpec(channels=c, stride=2 ** (i + 2))
              for i, c in enumerate(CHANNELS)}
    return Mask2FormerHead(cfg, shapes).eval()


@pytest.fixture(scope="module")
def pair():
    hf = _hf_model()
    ours = _our_head()
    state = convert_transformers_mask2former(hf.state_dict())
    result = ours.load_state_dict(state, strict=False)
    assert not result.unexpected_keys and not result.missing_keys, result
    torch.manual_seed(1)
    feats = [torch.randn(2, c, 64 // 2 ** i, 96 // 2 ** i) for i, c in enumerate(CHANNELS)]
    return hf, ours, feats


def _hf_predictions(hf, feats):
    with torch.no_grad():
        pd = hf.model.pixel_level_module.decoder(feats)
        dec = hf.model.transformer_module(multi_scale_features=pd.multi_scale_features,
                                          mask_features=pd.mask_features,
                                          output_hidden_states=True)
        cls = [hf.class_predictor(h.transpose(0, 1)) for h in dec.intermediate_hidden_states]
    return list(zip(cls, dec.masks_queries_logits))


def test_converter_covers_every_head_parameter(pair):
    _, ours, _ = pair
    n_conv = len(convert_transformers_mask2former(_hf_model().state_dict()))
    assert n_conv == len(ours.state_dict())


def test_logits_match_transformers_every_layer(pair):
    hf, ours, feats = pair
    ref = _hf_predictions(hf, feats)
    with torch.no_grad():
        got = ours.layers({f"res{i + 2}": f for i, f in enumerate(feats)})
    assert len(got) == len(ref) == DEC_LAYERS + 1
    diffs = []
    for (c, m), (rc, rm) in zip(got, ref):
        assert c.shape == rc.shape == (2, QUERIES, NUM_CLASSES + 1)
        assert m.shape == rm.shape == (2, QUERIES, 64, 96)
        diffs.append(((c - rc).abs().max().item(), (m - rm).abs().max().item()))
        torch.testing.assert_close(c, rc, atol=1e-4, rtol=0)
        torch.testing.assert_close(m, rm, atol=1e-4, rtol=0)
    # the masks must be informative: masked attention really masks something somewhere
    assert any(0.05 < (rm > 0).float().mean() < 0.95 for _, rm in ref)
    print("max abs diff per prediction set (cls, mask):", diffs)


def _targets(h: int, w: int):
    g = torch.Generator().manual_seed(3)
    labels = torch.randint(0, NUM_CLASSES, (2, h // 8, w // 8), generator=g)
    labels = labels.repeat_interleave(8, 1).repeat_interleave(8, 2)
    labels[0, :8] = 255
    return labels


def test_matching_and_losses_match_transformers(pair):
    hf, ours, _ = pair
    # distinct random predictions (no ties in the cost matrices)
    g = torch.Generator().manual_seed(11)
    preds = [(2 * torch.randn(2, QUERIES, NUM_CLASSES + 1, generator=g),
              3 * torch.randn(2, QUERIES, 32, 48, generator=g)) for _ in range(DEC_LAYERS + 1)]
    targets = semantic_targets(_targets(128, 192))
    criterion: SetCriterion = ours.criterion
    # matching: same points -> same assignment
    torch.manual_seed(5)
    ours_idx = criterion.match(*preds[-1], targets)
    torch.manual_seed(5)
    ref_idx = hf.criterion.matcher(preds[-1][1], preds[-1][0], [t[1] for t in targets],
                                   [t[0] for t in targets])
    for (q, j), (rq, rj) in zip(ours_idx, ref_idx):
        assert q.tolist() == rq.tolist() and j.tolist() == rj.tolist()
    assert sum(len(q) for q, _ in ours_idx) == sum(len(t[0]) for t in targets)
    # losses on all prediction sets, same draw order (final first, then 0..n-2)
    torch.manual_seed(7)
    got = criterion(preds, targets)
    torch.manual_seed(7)
    aux = [{"masks_queries_logits": m, "class_queries_logits": c} for c, m in preds[:-1]]
    ref = hf.criterion(preds[-1][1], preds[-1][0], [t[1] for t in targets],
                       [t[0] for t in targets], auxiliary_predictions=aux)
    weights = {"loss_cross_entropy": 2.0, "loss_mask": 5.0, "loss_dice": 5.0}
    assert len(got) == len(ref) == 3 * (DEC_LAYERS + 1)
    for key, value in ref.items():
        base, _, idx = key.partition("_")[2].partition("_")
        base_key = "loss_" + ("ce" if base == "cross" else base)
        if key.startswith("loss_cross_entropy"):
            idx = key[len("loss_cross_entropy"):].lstrip("_")
            w = weights["loss_cross_entropy"]
        else:
            w = weights["loss_" + key.split("_")[1]]
        ours_key = base_key + (f"_{idx}" if idx else "")
        torch.testing.assert_close(got[ours_key], value * w, atol=1e-5, rtol=1e-5)
    assert {"loss_ce", "loss_mask", "loss_dice", "loss_ce_0", "loss_dice_3"} <= set(got)
