"""mmcv's resize in the segmentation and detection pipelines (issue #23 item 5): images pixel-equal
to `cv2.resize(INTER_LINEAR)`, labels to `cv2.resize(INTER_NEAREST)` (what `mmcv.imresize` calls),
through the transforms, the augmentations and the mappers; output sizes equal to mmseg/mmcv's."""
from __future__ import annotations

import os

import cv2
import numpy as np
import pytest
from detectron2.data import transforms as T
from soma_mask2former.mapper import mask2former_semseg
from soma_mask2former.transforms import (
    ChoiceShortestEdgeResize,
    KeepRatioResize,
    RatioRandomResize,
)

from soma_d2.config import build_cfg
from soma_d2.data.resize import CV2Resize, CV2ResizeTransform, rescale_size, shortest_edge_size
from soma_d2.data.seg_mapper import build_sem_seg_augmentations

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(REPO, "configs", "gta2cbm_soma_semseg.yaml")
SEMFPN = os.path.join(REPO, "configs", "gta2cbm_soma_semfpn.yaml")

# Reference sizes from the official libraries (mmseg 1.2.2 `ResizeShortestEdge(scale, max_size)`
# and mmcv 2.0.0 `Resize(scale, keep_ratio=True)` applied to zero images of (h, w) in a side
# environment): (h, w, short, max_size, out_h, out_w) and (h, w, long, short, out_h, out_w).
# Odd rows are cases where Detectron2's ResizeShortestEdge rounding gives another size.
MMSEG_SHORTEST_EDGE = [(1261, 435, 1024, 2048, 2047, 706), (1296, 1991, 512, 2048, 512, 787),
                       (1812, 349, 819, 2048, 2046, 394), (463, 277, 256, 2048, 428, 256),
                       (1110, 341, 1024, 2048, 2047, 629), (1852, 1011, 256, 2048, 469, 256),
                       (1360, 309, 819, 2048, 2047, 465), (1256, 1744, 1024, 2048, 1024, 1422)]
MMCV_KEEP_RATIO = [(1052, 1914, 2048, 1024, 1024, 1863), (720, 1280, 2048, 1024, 1024, 1820),
                   (1024, 2048, 2048, 1024, 1024, 2048), (1080, 1920, 1920, 1080, 1080, 1920),
                   (333, 517, 1280, 720, 720, 1118), (1211, 607, 2048, 1024, 2043, 1024)]


def _image(h=97, w=131, channels=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, channels), dtype=np.uint8)


def _label(h=97, w=131, seed=1):
    return np.random.default_rng(seed).integers(0, 19, (h, w), dtype=np.uint8)


@pytest.mark.parametrize("new_hw", [(40, 55), (61, 131), (200, 263)])
def test_transform_equals_cv2_and_not_pil(new_hw):
    img, lab = _image(), _label()
    tfm = CV2ResizeTransform(97, 131, *new_hw)
    want = cv2.resize(img, new_hw[::-1], interpolation=cv2.INTER_LINEAR)
    assert np.array_equal(tfm.apply_image(img), want)
    assert np.array_equal(tfm.apply_segmentation(lab),
                          cv2.resize(lab, new_hw[::-1], interpolation=cv2.INTER_NEAREST))
    if new_hw[0] < 97:  # shrinking: PIL's antialiased bilinear (Detectron2's) is another image
        pil = T.ResizeTransform(97, 131, *new_hw).apply_image(img)
        assert np.abs(pil.astype(int) - want.astype(int)).max() > 10


def test_transform_keeps_channels_and_label_dtypes():
    gray = _image(channels=1)
    out = CV2ResizeTransform(97, 131, 50, 60).apply_image(gray)
    assert out.shape == (50, 60, 1)
    assert np.array_equal(out[..., 0], cv2.resize(gray[..., 0], (60, 50)))
    lab = _label().astype(np.int64) * 1000  # ids cv2 cannot hold as int64 still resize exactly
    out = CV2ResizeTransform(97, 131, 50, 60).apply_segmentation(lab)
    assert out.dtype == np.int64
    want = cv2.resize(lab.astype(np.int32), (60, 50), interpolation=cv2.INTER_NEAREST)
    assert np.array_equal(out, want)
    with pytest.raises(ValueError, match="expects a 97x131 input"):
        CV2ResizeTransform(97, 131, 50, 60).apply_image(_image(90, 131))


@pytest.mark.parametrize("h, w, short, max_size, out_h, out_w", MMSEG_SHORTEST_EDGE)
def test_shortest_edge_size_matches_mmseg(h, w, short, max_size, out_h, out_w):
    assert shortest_edge_size(h, w, short, max_size) == (out_h, out_w)


def test_detectron2_shortest_edge_rounding_differs_from_mmseg():
    img = np.zeros((1261, 435, 1), np.uint8)  # first reference row: mmseg gives 2047 x 706
    tfm = T.ResizeShortestEdge(1024, 2048).get_transform(img)
    assert (tfm.new_h, tfm.new_w) == (2048, 706)


@pytest.mark.parametrize("h, w, long, short, out_h, out_w", MMCV_KEEP_RATIO)
def test_rescale_size_matches_mmcv(h, w, long, short, out_h, out_w):
    assert rescale_size(h, w, long, short) == (out_h, out_w)
    tfm = KeepRatioResize(long, short).get_transform(np.zeros((h, w, 1), np.uint8))
    assert isinstance(tfm, CV2ResizeTransform) and (tfm.new_h, tfm.new_w) == (out_h, out_w)


def test_random_resizes_draw_mmseg_sizes_and_resize_with_cv2():
    img = _image()
    np.random.seed(0)
    choice = ChoiceShortestEdgeResize([40, 64, 150], 200)
    sizes = set()
    for _ in range(30):
        tfm = choice.get_transform(img)
        assert isinstance(tfm, CV2ResizeTransform)
        sizes.add((tfm.new_h, tfm.new_w))
        want = shortest_edge_size(97, 131, min(tfm.new_h, tfm.new_w), 200)
        assert (tfm.new_h, tfm.new_w) == want or tfm.new_w == 200
    assert sizes == {shortest_edge_size(97, 131, s, 200) for s in (40, 64, 150)}
    tfm = RatioRandomResize(262, 194, (0.5, 2.0)).get_transform(img)
    assert isinstance(tfm, CV2ResizeTransform)
    assert np.array_equal(tfm.apply_image(img),
                          cv2.resize(img, (tfm.new_w, tfm.new_h), interpolation=cv2.INTER_LINEAR))


def test_cv2_resize_wrapper_keeps_detectron2_sizes():
    img = _image()
    aug = T.ResizeShortestEdge(64, 100)
    tfm = CV2Resize(aug).get_transform(img)
    d2 = aug.get_transform(img)
    assert isinstance(tfm, CV2ResizeTransform) and (tfm.new_h, tfm.new_w) == (d2.new_h, d2.new_w)
    assert np.array_equal(tfm.apply_image(img), cv2.resize(img, (d2.new_w, d2.new_h)))
    with pytest.raises(TypeError, match="wraps resize augmentations"):
        CV2Resize(T.RandomFlip(prob=1.0)).get_transform(img)


def test_mask2former_pipeline_resizes_with_cv2(tmp_path):
    cfg = build_cfg(RECIPE)
    train = mask2former_semseg(cfg, is_train=True).augmentations.augs
    assert isinstance(train[0], ChoiceShortestEdgeResize)
    assert train[0].short_edges == list(cfg.INPUT.MIN_SIZE_TRAIN)
    assert train[0].max_size == cfg.INPUT.MAX_SIZE_TRAIN == 2048
    # test time: the BDD rule (1280, 720) on a 300x400 image -> 720x960, pixel-equal to cv2
    image = _image(300, 400)
    path = tmp_path / "bdd100k" / "img.png"
    path.parent.mkdir()
    cv2.imwrite(str(path), image)  # written as BGR, read back as the config's RGB
    out = mask2former_semseg(cfg, is_train=False)({"file_name": str(path)})
    rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    want = cv2.resize(rgb, (960, 720), interpolation=cv2.INTER_LINEAR)
    assert cfg.INPUT.FORMAT == "RGB"
    assert np.array_equal(out["image"].numpy().transpose(1, 2, 0), want)


def test_semfpn_pipeline_resizes_with_cv2():
    cfg = build_cfg(SEMFPN)
    for is_train in (True, False):
        resize = build_sem_seg_augmentations(cfg, is_train)[0]
        assert isinstance(resize, CV2Resize), is_train
        img, lab = _image(), _label()
        aug_input = T.AugInput(img, sem_seg=lab)
        tfm = resize(aug_input)
        assert isinstance(tfm, CV2ResizeTransform)
        size = (tfm.new_w, tfm.new_h)
        assert np.array_equal(aug_input.image, cv2.resize(img, size, interpolation=cv2.INTER_LINEAR))
        assert np.array_equal(aug_input.sem_seg,
                              cv2.resize(lab, size, interpolation=cv2.INTER_NEAREST))
