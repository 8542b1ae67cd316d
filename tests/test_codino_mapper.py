"""The codino_detr pipeline: canvas padding with 114, boxes kept inside the crop, difficult boxes
left out of training targets, re-draw (None) when the size filter removes every box, test-time
long side to the canvas; the photometric distortion's HSV stage is lossless when no operation
fires; the ATSS assigner equals a literal per-GT loop of its rule."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from soma_codino.aux_heads import atss_assign
from soma_codino.mapper import CoDINODatasetMapper, photometric_distortion
from torchvision.ops import box_iou


def _record(tmp_path, annos, size=(60, 80)):
    path = tmp_path / "img.png"
    Image.fromarray(np.full((*size, 3), 200, dtype=np.uint8)).save(path)
    return {"file_name": str(path), "height": size[0], "width": size[1], "image_id": 0,
            "annotations": annos}


def _anno(box, cls=1, difficult=0):
    return {"bbox": box, "bbox_mode": 0, "category_id": cls, "difficult": difficult}


def _mapper(is_train, **kw):
    args = dict(is_train=is_train, canvas=128, crop=128, scale_range=(1.0, 1.0), pad_value=114.0,
                image_format="RGB", photometric=False)
    args.update(kw)
    return CoDINODatasetMapper(**args)


def test_train_pads_to_canvas_and_drops_difficult(tmp_path):
    np.random.seed(0)
    rec = _record(tmp_path, [_anno([10, 10, 30, 40]), _anno([40, 5, 70, 50], 3, difficult=1)])
    out = _mapper(True)(rec)
    assert out["image"].shape == (3, 128, 128)
    assert out["image_size"] == (96, 128)  # long side 80 -> 128 (scale 1.0 of the canvas)
    assert (out["image"][:, 96:] == 114).all()
    inst = out["instances"]
    assert inst.gt_classes.tolist() == [1]
    box = inst.gt_boxes.tensor[0]
    assert box[2] - box[0] == pytest.approx(32, abs=0.5) and box[3] - box[1] == pytest.approx(48)


def test_size_filter_redraws_and_test_resize(tmp_path):
    rec = _record(tmp_path, [_anno([10, 10, 10.005, 40])])
    assert _mapper(True)(rec) is None  # all boxes removed by the w, h > 0.01 filter
    test = _mapper(False, canvas=160, crop=160)(_record(tmp_path, [_anno([10, 10, 30, 40])]))
    assert test["image_size"] == (120, 160) and test["image"].shape == (3, 160, 160)
    assert "instances" not in test


def test_crop_larger_than_canvas_is_refused():
    with pytest.raises(ValueError, match="CROP_SIZE=256"):
        _mapper(True, crop=256)


def test_photometric_distortion_without_operations_is_identity():
    class NoOps:
        def randint(self, n, size=None):
            return np.zeros(size, dtype=int) if size else 0

        def uniform(self, a, b):
            return (a + b) / 2

    img = np.random.RandomState(0).randint(0, 255, (8, 9, 3)).astype(np.float32)
    np.testing.assert_allclose(photometric_distortion(img, NoOps()), img, atol=1e-3)
    out = photometric_distortion(img + 300, np.random.RandomState(1))
    assert out.dtype == np.float32 and out.max() > 255  # no clipping to [0, 255]


def _naive_atss(anchors, counts, gts, topk):
    ious = box_iou(anchors, gts)
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    best = torch.full((len(anchors),), -1.0)
    out = torch.full((len(anchors),), -1, dtype=torch.long)
    for g in range(len(gts)):
        gc = (gts[g, :2] + gts[g, 2:]) / 2
        cands, start = [], 0
        for n in counts:
            d = [(float((centres[start + i] - gc).norm()), start + i) for i in range(n)]
            cands += [i for _, i in sorted(d)[:min(topk, n)]]
            start += n
        vals = ious[cands, g]
        thr = float(vals.mean() + vals.std())
        for a in cands:
            x, y = centres[a].tolist()
            inside = min(x - gts[g, 0], y - gts[g, 1], gts[g, 2] - x, gts[g, 3] - y) > 0.01
            if ious[a, g] >= thr and inside and ious[a, g] > best[a]:
                best[a], out[a] = ious[a, g], g
    return out


@pytest.mark.parametrize("seed", range(3))
def test_atss_assign_equals_naive_loop(seed):
    gen = torch.Generator().manual_seed(seed)
    maps = [torch.zeros(1, 1, 16, 16), torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 4, 4)]
    from soma_codino.aux_heads import ATSSHead

    anchors, counts = ATSSHead.anchors(maps)
    xy = torch.rand(4, 2, generator=gen) * 40
    gts = torch.cat([xy, xy + torch.rand(4, 2, generator=gen) * 30 + 4], 1)
    assert torch.equal(atss_assign(anchors, counts, gts, 9), _naive_atss(anchors, counts, gts, 9))
