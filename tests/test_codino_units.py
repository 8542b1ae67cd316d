"""Co-DINO parts against independent references: Hungarian matching vs brute force over all
assignments, soft-NMS vs a literal per-class loop of mmcv's algorithm, the DN noise bounds, label
noise rate and attention mask (checked on the decoder's outputs), and the quality focal loss."""
from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from soma_codino.denoising import DenoisingGenerator, dn_attention_mask, dn_targets
from soma_codino.losses import match_cost, quality_focal_loss
from soma_codino.soft_nms import batched_soft_nms
from soma_codino.transformer import DinoDecoder
from torch import nn

from soma_d2.layers import hungarian_match


def _brute_force(cost: torch.Tensor) -> float:
    q, g = cost.shape
    return min(sum(float(cost[perm[j], j]) for j in range(g))
               for perm in itertools.permutations(range(q), g))


@pytest.mark.parametrize("seed", range(6))
def test_hungarian_equals_brute_force(seed):
    gen = torch.Generator().manual_seed(seed)
    q, g = 6, 1 + seed % 4
    logits = torch.randn(q, 3, generator=gen)
    boxes = torch.rand(q, 4, generator=gen) * 0.4 + 0.1
    gt_boxes = torch.rand(g, 4, generator=gen) * 0.4 + 0.1
    gt_labels = torch.randint(0, 3, (g,), generator=gen)
    cost = match_cost(logits, boxes, gt_labels, gt_boxes, (64, 96), (2.0, 5.0, 2.0))
    rows, cols = hungarian_match(cost)
    assert len(set(rows.tolist())) == g and sorted(cols.tolist()) == list(range(g))
    assert float(cost[rows, cols].sum()) == pytest.approx(_brute_force(cost), abs=1e-5)


def test_match_cost_terms_match_formulas():
    logits = torch.tensor([[0.3, -1.0]])
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.2]])
    gt = torch.tensor([[0.55, 0.5, 0.2, 0.4]])
    cost = match_cost(logits, boxes, torch.tensor([0]), gt, (100, 100), (2.0, 5.0, 2.0))
    p = torch.sigmoid(torch.tensor(0.3))
    focal = -(p + 1e-12).log() * 0.25 * (1 - p) ** 2 + (1 - p + 1e-12).log() * 0.75 * p ** 2
    l1 = 0.05 + 0 + 0 + 0.2
    # pred [40,40,60,60], gt [45,30,65,70]: inter 15x20=300, union 400+800-300=900, hull 25x40
    giou = 300 / 900 - (1000 - 900) / 1000
    assert float(cost) == pytest.approx(float(2 * focal + 5 * l1 - 2 * giou), rel=1e-5)


def _naive_soft_nms(boxes, scores, classes, thr, min_score):
    """mmcv soft_nms (linear) per class with Python lists, merged by score."""
    out = []
    for c in sorted(set(classes.tolist())):
        idx = [i for i in range(len(scores)) if classes[i] == c]
        s = {i: float(scores[i]) for i in idx}
        while s:
            best = max(s, key=lambda i: (s[i], -i))
            if s[best] < min_score:
                break
            out.append((best, s.pop(best)))
            for j in list(s):
                b1, b2 = boxes[best].tolist(), boxes[j].tolist()
                iw = max(0.0, min(b1[2], b2[2]) - max(b1[0], b2[0]))
                ih = max(0.0, min(b1[3], b2[3]) - max(b1[1], b2[1]))
                inter = iw * ih
                a1 = (b1[2] - b1[0]) * (b1[3] - b1[1])
                a2 = (b2[2] - b2[0]) * (b2[3] - b2[1])
                iou = inter / (a1 + a2 - inter)
                if iou > thr:
                    s[j] *= 1 - iou
                if s[j] < min_score:
                    del s[j]
    out.sort(key=lambda t: -t[1])
    return out


@pytest.mark.parametrize("seed", range(4))
def test_soft_nms_equals_naive_reference(seed):
    gen = torch.Generator().manual_seed(seed)
    n = 40
    xy = torch.rand(n, 2, generator=gen) * 50
    wh = torch.rand(n, 2, generator=gen) * 30 + 5
    boxes = torch.cat([xy, xy + wh], 1)
    boxes[n // 2:] = boxes[: n // 2] + torch.rand(n // 2, 4, generator=gen)  # near duplicates
    scores = torch.rand(n, generator=gen)
    classes = torch.randint(0, 3, (n,), generator=gen)
    for thr in (0.3, 0.8):
        keep, new = batched_soft_nms(boxes, scores, classes, thr, 0.5, 1e-3)
        ref = _naive_soft_nms(boxes, scores, classes, thr, 1e-3)
        assert keep.tolist() == [i for i, _ in ref]
        assert new.tolist() == pytest.approx([s for _, s in ref], abs=1e-6)
    # at threshold 0.3 some scores were decayed, not just kept
    keep, new = batched_soft_nms(boxes, scores, classes, 0.3, 0.5, 1e-3)
    assert (new < scores[keep] - 1e-6).any()


def test_dn_noise_bounds_and_label_rate():
    torch.manual_seed(0)
    gen = DenoisingGenerator(num_classes=7, embed_dim=16, num_dn_queries=100,
                             label_noise_scale=0.5, box_noise_scale=1.0)
    gt = torch.tensor([[0.3, 0.3, 0.5, 0.6], [0.2, 0.25, 0.4, 0.3]])
    labels = torch.tensor([1, 4])
    groups = gen.num_groups(len(gt))
    assert groups == 50
    noisy_labels, noisy, r = gen.noise(labels, gt, groups)
    assert noisy.shape == (2 * groups * 2, 4)
    negative = torch.zeros(2 * groups, 2, dtype=torch.bool)
    negative[1::2] = True
    negative = negative.flatten()
    assert (r[~negative].abs() < 1).all()
    assert (r[negative].abs() >= 1).all() and (r[negative].abs() < 2).all()
    assert ((noisy >= 0) & (noisy <= 1)).all()
    wh = (gt[:, 2:] - gt[:, :2]).repeat(1, 2).repeat(2 * groups, 1)
    shift = (noisy - gt.repeat(2 * groups, 1)).abs()
    assert (shift[~negative] <= wh[~negative] / 2 + 1e-6).all()
    # label noise: re-drawn with p = 0.25 among 7 classes -> changed with p = 0.25 * 6 / 7
    many = torch.zeros(20000, dtype=torch.long)
    changed = (gen.noise(many, torch.tensor([[0.1, 0.1, 0.2, 0.2]]).repeat(20000, 1), 1)[0][
        :20000] != 0).float().mean()
    assert float(changed) == pytest.approx(0.25 * 6 / 7, abs=0.015)


def test_dn_group_count_and_targets():
    gen = DenoisingGenerator(7, 16, num_dn_queries=100)
    assert [gen.num_groups(n) for n in (0, 1, 3, 100, 250)] == [1, 100, 33, 1, 1]
    labels = [torch.tensor([2, 3, 5]), torch.tensor([6])]
    boxes = [torch.rand(3, 4) * 0.3 + 0.3, torch.rand(1, 4) * 0.3 + 0.3]
    content, refs, mask, meta = gen(labels, boxes, num_matching=5)
    assert meta.num_groups == 33 and meta.num_queries == 2 * 33 * 3
    assert content.shape == (2, meta.num_queries, 16) and mask.shape[0] == meta.num_queries + 5
    t_labels, _, t_weights = dn_targets(meta, labels[1], boxes[1], 7)
    assert int(t_weights.sum()) == 33 and (t_labels[t_weights > 0] == 6).all()
    assert (t_labels[t_weights == 0] == 7).all()
    # image 1 has 1 GT: its padding slots (content zero) are targets of background only
    assert content[1, 1].abs().sum() == 0


def test_dn_attention_mask_rules():
    mask = dn_attention_mask(num_dn=12, num_groups=3, num_matching=5)
    assert mask[12:, :12].all()  # matching queries do not see DN queries
    assert not mask[:12, 12:].any()  # DN queries see matching queries
    assert not mask[12:, 12:].any()
    for g in range(3):
        rows = slice(4 * g, 4 * g + 4)
        inside = torch.zeros(12, dtype=torch.bool)
        inside[4 * g: 4 * g + 4] = True
        assert not mask[rows, :12][:, inside].any()
        assert mask[rows, :12][:, ~inside].all()


def test_decoder_outputs_respect_the_dn_mask():
    torch.manual_seed(0)
    dim, levels = 16, 2
    dec = DinoDecoder(2, dim, 2, levels, 2, 32).eval()
    reg = nn.ModuleList(nn.Linear(dim, 4) for _ in range(2))
    shapes = [(4, 4), (2, 2)]
    memory = torch.randn(1, 20, dim)
    num_dn, groups, matching = 8, 2, 5
    mask = dn_attention_mask(num_dn, groups, matching)
    query = torch.randn(1, num_dn + matching, dim)
    ref = torch.rand(1, num_dn + matching, 4) * 0.5 + 0.25
    out, _ = dec(query, ref, memory, shapes, reg, mask)
    q2, r2 = query.clone(), ref.clone()
    q2[:, 4:8] = torch.randn(1, 4, dim)  # change DN group 1 only
    r2[:, 4:8] = torch.rand(1, 4, 4)
    out2, _ = dec(q2, r2, memory, shapes, reg, mask)
    torch.testing.assert_close(out2[-1][:, :4], out[-1][:, :4])  # group 0 unaffected
    torch.testing.assert_close(out2[-1][:, 8:], out[-1][:, 8:])  # matching unaffected
    q3 = query.clone()
    q3[:, 10] += 1.0  # a matching query changes: DN queries see it
    out3, _ = dec(q3, ref, memory, shapes, reg, mask)
    assert not torch.allclose(out3[-1][:, :8], out[-1][:, :8])


def test_quality_focal_loss_matches_formula():
    logits = torch.tensor([[0.2, -0.5, 1.0], [0.3, 0.1, -2.0]])
    labels = torch.tensor([2, 3])  # 3 = background
    scores = torch.tensor([0.7, 0.0])
    loss = quality_focal_loss(logits, labels, scores)
    expected = []
    for i in range(2):
        total = 0.0
        for c in range(3):
            p = torch.sigmoid(logits[i, c])
            t = float(scores[i]) if c == labels[i] else 0.0
            bce = F.binary_cross_entropy_with_logits(logits[i, c], torch.tensor(t))
            total += float(bce) * abs(t - float(p)) ** 2
        expected.append(total)
    assert loss.tolist() == pytest.approx(expected, rel=1e-5)
    assert math.isfinite(float(loss.sum()))


# ---- cross-checks against transformers' Deformable DETR (independent implementation) ---------
def test_sine_position_encoding_matches_transformers():
    from transformers.models.deformable_detr.modeling_deformable_detr import (
        DeformableDetrSinePositionEmbedding as Ref,
    )

    from soma_d2.layers import sine_position_encoding

    # transformers uses Deformable DETR's offset -0.5; Co-DINO's mmdet encoding uses offset 0
    ref = Ref.build_sine_position_embedding(torch.Size((2, 3, 5, 7)), "cpu", torch.float32, 16,
                                            True, 2 * math.pi, 20)
    ours = sine_position_encoding(2, 5, 7, 16, torch.device("cpu"), temperature=20.0, offset=-0.5)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(
        sine_position_encoding(2, 5, 7, 16, torch.device("cpu"), temperature=20.0), ref)


def test_encoder_proposals_and_proposal_embedding_match_transformers():
    from soma_codino.transformer import encoder_proposals
    from transformers.models.deformable_detr.modeling_deformable_detr import (
        DeformableDetrModel as Ref,
    )

    from soma_d2.layers import box_sine_embedding

    class Stub:
        enc_output = enc_output_norm = nn.Identity()

        class config:  # noqa: N801
            d_model = 32

    shapes = [(6, 5), (3, 3), (2, 1)]
    memory = torch.randn(2, sum(h * w for h, w in shapes), 32)
    padding = torch.zeros(2, memory.shape[1], dtype=torch.bool)
    ref_memory, ref_props = Ref.gen_encoder_output_proposals(Stub(), memory, padding, shapes)
    ours_memory, ours_props = encoder_proposals(memory, shapes)
    torch.testing.assert_close(ours_memory, ref_memory)
    assert torch.equal(torch.isinf(ours_props), torch.isinf(ref_props))
    finite = torch.isfinite(ref_props)
    torch.testing.assert_close(ours_props[finite], ref_props[finite])
    logits = torch.randn(2, 7, 4)
    torch.testing.assert_close(box_sine_embedding(logits.sigmoid(), 16, order="xywh"),
                               Ref.get_proposal_pos_embed(Stub(), logits), rtol=1e-5, atol=1e-5)
