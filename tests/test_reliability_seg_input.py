"""The segmentation input path has detection's reliability layer: undecodable, truncated or missing
images and labels fail naming the file (or are skipped and counted with DATALOADER.SKIP_BAD_IMAGES,
also inside Detectron2's train loader); 16-bit, CMYK, palette and EXIF-rotated images decode as in
detection (numpy / Detectron2 references); labels are read as raw ids (palette indices, 16 bits)."""
from __future__ import annotations

import logging
import os

import numpy as np
import pytest
import torch
from detectron2.data import build_detection_train_loader
from detectron2.data import detection_utils as d2_utils
from detectron2.data.common import MapDataset
from PIL import Image

from soma_d2.config import build_cfg
from soma_d2.data.robust_mapper import BadImageError
from soma_d2.data.seg_mapper import SemSegDatasetMapper, build_sem_seg_mapper

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs", "test", "tiny_soma_semseg.yaml")
H, W = 48, 64


def _rgb() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(H, W, 3), dtype=np.uint8)


def _label(h: int = H, w: int = W) -> np.ndarray:
    return (np.arange(h * w).reshape(h, w) % 19).astype(np.uint8)


def _cfg_mapper(skip: bool, is_train: bool = True) -> SemSegDatasetMapper:
    return build_sem_seg_mapper(build_cfg(TINY, ["DATALOADER.SKIP_BAD_IMAGES", str(skip)]),
                                is_train)


def _plain(is_train: bool = True) -> SemSegDatasetMapper:
    """No augmentation: the output is exactly what was decoded."""
    return SemSegDatasetMapper(is_train, [], "RGB", num_classes=19)


def _truncate(src: str, dst: str) -> str:
    data = open(src, "rb").read()
    with open(dst, "wb") as f:
        f.write(data[: len(data) // 2])
    return dst


@pytest.fixture
def files(tmp_path) -> dict[str, str]:
    out = {"good": str(tmp_path / "good.png"), "label": str(tmp_path / "good_label.png")}
    Image.fromarray(_rgb()).save(out["good"])
    Image.fromarray(_label()).save(out["label"])
    jpg = str(tmp_path / "good.jpg")
    Image.fromarray(_rgb()).save(jpg, quality=95)
    out["corrupt"] = str(tmp_path / "corrupt.jpg")
    with open(out["corrupt"], "wb") as f:
        f.write(b"\xff\xd8\xff\xe0 this is not a jpeg" + bytes(range(256)))
    out["truncated"] = _truncate(jpg, str(tmp_path / "truncated.jpg"))
    out["missing"] = str(tmp_path / "missing.jpg")
    big_label = str(tmp_path / "big_label.png")
    Image.fromarray(np.random.default_rng(2).integers(0, 19, (H, W), np.uint8)).save(big_label)
    out["truncated_label"] = _truncate(big_label, str(tmp_path / "truncated_label.png"))
    out["corrupt_label"] = str(tmp_path / "corrupt_label.png")
    with open(out["corrupt_label"], "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n garbage")
    out["rgb_label"] = str(tmp_path / "rgb_label.png")
    Image.fromarray(_rgb()).save(out["rgb_label"])
    out["small_label"] = str(tmp_path / "small_label.png")
    Image.fromarray(_label(H // 2, W)).save(out["small_label"])
    return out


def _rec(image: str, label: str) -> dict:
    return {"file_name": image, "sem_seg_file_name": label}


@pytest.mark.parametrize("kind", ["corrupt", "truncated", "missing"])
def test_bad_image_fails_with_the_file_path_by_default(files, kind):
    with pytest.raises(BadImageError) as info:
        _cfg_mapper(skip=False)(_rec(files[kind], files["label"]))
    assert files[kind] in str(info.value) and "SKIP_BAD_IMAGES" in str(info.value)


@pytest.mark.parametrize("kind, says", [("truncated_label", "label"), ("corrupt_label", "label"),
                                        ("rgb_label", "single-channel"),
                                        ("small_label", "is 24x64 (HxW) but image")])
def test_bad_label_fails_with_the_label_path(files, kind, says):
    with pytest.raises(BadImageError) as info:
        _cfg_mapper(skip=False)(_rec(files["good"], files[kind]))
    assert files[kind] in str(info.value) and says in str(info.value)


def test_test_time_mapper_never_skips(files):
    with pytest.raises(BadImageError, match="corrupt.jpg"):
        _cfg_mapper(skip=True, is_train=False)(_rec(files["corrupt"], files["label"]))


def test_skipped_images_and_labels_are_counted_and_reported(files, caplog):
    mapper = _cfg_mapper(skip=True)
    with caplog.at_level(logging.WARNING, logger="soma_d2.data.robust_mapper"):
        assert mapper(_rec(files["corrupt"], files["label"])) is None
        assert mapper(_rec(files["good"], files["truncated_label"])) is None
        good = mapper(_rec(files["good"], files["label"]))
    assert mapper.num_skipped == 2
    assert good["sem_seg"].shape == good["image"].shape[1:]
    messages = [r.getMessage() for r in caplog.records]
    assert any("corrupt.jpg" in m and "1 image(s) skipped so far" in m for m in messages)
    assert any("truncated_label.png" in m and "2 image(s) skipped so far" in m for m in messages)
    dataset = MapDataset([_rec(files["corrupt"], files["label"]),
                          _rec(files["good"], files["label"])], mapper)
    assert dataset[0]["file_name"] == files["good"] and mapper.num_skipped == 3


def test_detectron2_train_loader_skips_bad_segmentation_records(files):
    mapper = _cfg_mapper(skip=True)
    records = [_rec(files["good"], files["label"]), _rec(files["corrupt"], files["label"]),
               _rec(files["good"], files["rgb_label"])]
    loader = build_detection_train_loader(records, mapper=mapper, total_batch_size=2,
                                          num_workers=0)
    seen = [d["file_name"] for _, batch in zip(range(3), loader) for d in batch]
    assert len(seen) == 6 and set(seen) == {files["good"]} and mapper.num_skipped >= 1


# ---- unusual but valid files decode as in detection --------------------------------------------


@pytest.mark.parametrize("mode", ["P", "CMYK", "L", "RGBA"])
def test_palette_cmyk_gray_rgba_images_match_detectron2(tmp_path, mode, files):
    path = str(tmp_path / f"img_{mode}.{'jpg' if mode == 'CMYK' else 'png'}")
    Image.fromarray(_rgb()).convert(mode).save(path)
    out = _plain()(_rec(path, files["label"]))
    reference = d2_utils.read_image(path, format="RGB")
    np.testing.assert_array_equal(out["image"].permute(1, 2, 0).numpy(), reference)
    np.testing.assert_array_equal(out["sem_seg"].numpy(), _label())


def test_16bit_image_is_scaled_not_clipped(tmp_path, files):
    values = np.random.default_rng(1).integers(0, 65536, size=(H, W), dtype=np.uint16)
    path = str(tmp_path / "depth16.png")
    Image.fromarray(values).save(path)
    out = _plain()(_rec(path, files["label"]))
    expected = np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8)
    for c in range(3):
        np.testing.assert_array_equal(out["image"][c].numpy(), expected)


@pytest.mark.parametrize("orientation,k", [(3, 2), (6, -1), (8, 1)])
def test_exif_rotation_is_applied_and_sizes_follow_it(tmp_path, orientation, k):
    pixels = _rgb()
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = str(tmp_path / f"exif{orientation}.png")
    Image.fromarray(pixels).save(path, exif=exif)
    shown = np.rot90(pixels, k=k)  # numpy reference of the displayed image
    label = str(tmp_path / f"exif{orientation}_label.png")
    Image.fromarray(_label(*shown.shape[:2])).save(label)  # labels describe the displayed image
    for is_train in (True, False):
        out = _plain(is_train)(_rec(path, label))
        np.testing.assert_array_equal(out["image"].permute(1, 2, 0).numpy(), shown)
        assert (out["height"], out["width"]) == shown.shape[:2]
        if is_train:
            np.testing.assert_array_equal(out["sem_seg"].numpy(), _label(*shown.shape[:2]))


def test_labels_are_raw_ids_palette_indices_and_16_bit(tmp_path, files):
    ids = _label()
    palette = Image.fromarray(ids, mode="P")
    palette.putpalette([v for i in range(256) for v in (255 - i, i, (7 * i) % 256)])
    p_path = str(tmp_path / "palette_label.png")
    palette.save(p_path)
    # Detectron2's read_image(..., "L") would give luminances of the palette colours
    assert not np.array_equal(d2_utils.read_image(p_path, "L")[..., 0], ids)
    out = _plain()(_rec(files["good"], p_path))
    np.testing.assert_array_equal(out["sem_seg"].numpy(), ids)
    assert out["sem_seg"].dtype == torch.long
    sixteen = str(tmp_path / "label16.png")
    Image.fromarray(ids.astype(np.uint16)).save(sixteen)
    assert Image.open(sixteen).mode.startswith("I")
    np.testing.assert_array_equal(_plain()(_rec(files["good"], sixteen))["sem_seg"].numpy(), ids)
