"""Bad images: corrupt, truncated and missing files fail with the file's path by default, or are
skipped and counted with DATALOADER.SKIP_BAD_IMAGES (also inside Detectron2's real train loader);
grayscale, palette, RGBA, 16-bit and EXIF-rotated images decode into the configured format, checked
against Detectron2's `read_image` and numpy references."""
from __future__ import annotations

import logging
import os

import numpy as np
import pytest
from detectron2.data import build_detection_train_loader
from detectron2.data import detection_utils as d2_utils
from detectron2.data.common import MapDataset
from detectron2.structures import BoxMode
from PIL import Image

from soma_d2.config import build_cfg
from soma_d2.data.detection_mapper import build_detection_mapper
from soma_d2.data.robust_mapper import BadImageError, read_image_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs", "test", "tiny_soma_det.yaml")
H, W = 48, 64


def _rgb() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(H, W, 3), dtype=np.uint8)


def _record(path: str, height: int = H, width: int = W) -> dict:
    box = {"bbox": [4.0, 4.0, 30.0, 30.0], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0}
    return {"file_name": path, "image_id": os.path.basename(path), "height": height,
            "width": width, "annotations": [box]}


def _mapper(skip: bool, is_train: bool = True):
    cfg = build_cfg(TINY, ["DATALOADER.SKIP_BAD_IMAGES", str(skip), "INPUT.IMAGE_SIZE", "64"])
    return build_detection_mapper(cfg, is_train)


@pytest.fixture
def files(tmp_path) -> dict[str, str]:
    out = {}
    good = str(tmp_path / "good.png")
    Image.fromarray(_rgb()).save(good)
    out["good"] = good
    jpg = tmp_path / "good.jpg"
    Image.fromarray(_rgb()).save(jpg, quality=95)
    out["corrupt"] = str(tmp_path / "corrupt.jpg")
    with open(out["corrupt"], "wb") as f:
        f.write(b"\xff\xd8\xff\xe0 this is not a jpeg" + bytes(range(256)))
    data = jpg.read_bytes()
    out["truncated"] = str(tmp_path / "truncated.jpg")
    with open(out["truncated"], "wb") as f:
        f.write(data[: len(data) // 2])
    out["missing"] = str(tmp_path / "missing.jpg")
    return out


@pytest.mark.parametrize("kind", ["corrupt", "truncated", "missing"])
def test_bad_image_fails_with_the_file_path_by_default(files, kind):
    with pytest.raises(BadImageError) as info:
        _mapper(skip=False)(_record(files[kind]))
    assert files[kind] in str(info.value) and "SKIP_BAD_IMAGES" in str(info.value)


def test_test_time_mapper_never_skips(files):
    # an evaluation that silently drops (or duplicates) images would report a wrong metric
    with pytest.raises(BadImageError, match="corrupt.jpg"):
        _mapper(skip=True, is_train=False)(_record(files["corrupt"]))


def test_size_mismatch_with_annotation_is_a_bad_image(files):
    with pytest.raises(BadImageError, match=r"Mismatched image shape.*good\.png"):
        _mapper(skip=False)(_record(files["good"], height=W, width=H))


def test_skipped_images_are_counted_and_reported(files, caplog):
    mapper = _mapper(skip=True)
    with caplog.at_level(logging.WARNING, logger="soma_d2.data.robust_mapper"):
        assert mapper(_record(files["corrupt"])) is None
        assert mapper(_record(files["truncated"])) is None
        good = mapper(_record(files["good"]))
    assert mapper.num_skipped == 2
    assert good["file_name"] == files["good"] and good["image"].shape[0] == 3
    messages = [r.getMessage() for r in caplog.records]
    assert any("corrupt.jpg" in m and "1 image(s) skipped so far" in m for m in messages)
    assert any("truncated.jpg" in m and "2 image(s) skipped so far" in m for m in messages)

    # Detectron2's MapDataset draws another record when the mapper returns None
    dataset = MapDataset([_record(files["corrupt"]), _record(files["good"])], mapper)
    assert dataset[0]["file_name"] == files["good"]
    assert mapper.num_skipped == 3


def test_detectron2_train_loader_skips_bad_images(files):
    mapper = _mapper(skip=True)
    records = [_record(files["good"]), _record(files["corrupt"]), _record(files["truncated"])]
    loader = build_detection_train_loader(records, mapper=mapper, total_batch_size=2,
                                          num_workers=0)
    seen = [d["file_name"] for _, batch in zip(range(4), loader) for d in batch]
    assert len(seen) == 8 and set(seen) == {files["good"]}
    assert mapper.num_skipped >= 1


# ---- unusual but valid images decode into the configured format -------------------------------


def _save(tmp_path, name: str, image: Image.Image, **kwargs) -> str:
    path = str(tmp_path / name)
    image.save(path, **kwargs)
    return path


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "LA", "CMYK"])
@pytest.mark.parametrize("fmt", ["RGB", "BGR"])
def test_grayscale_rgba_palette_images_match_detectron2(tmp_path, mode, fmt):
    image = Image.fromarray(_rgb()).convert(mode)
    path = _save(tmp_path, f"img_{mode}.{'jpg' if mode == 'CMYK' else 'png'}", image)
    ours = read_image_file(path, fmt)
    reference = d2_utils.read_image(path, format=fmt)
    assert ours.shape == (H, W, 3) and ours.dtype == np.uint8
    np.testing.assert_array_equal(ours, reference)


def test_16bit_grayscale_is_scaled_not_clipped(tmp_path):
    rng = np.random.default_rng(1)
    values = rng.integers(0, 65536, size=(H, W), dtype=np.uint16)
    path = _save(tmp_path, "depth16.png", Image.fromarray(values))
    assert Image.open(path).mode.startswith("I")
    ours = read_image_file(path, "RGB")
    expected = np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8)
    assert ours.shape == (H, W, 3)
    for c in range(3):
        np.testing.assert_array_equal(ours[..., c], expected)
    # what plain PIL conversion (Detectron2's read_image) gives: saturated white
    assert (d2_utils.read_image(path, format="RGB") == 255).mean() > 0.9


@pytest.mark.parametrize("orientation,k", [(3, 2), (6, -1), (8, 1)])
def test_exif_orientation_is_applied(tmp_path, orientation, k):
    pixels = _rgb()
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = _save(tmp_path, f"exif{orientation}.png", Image.fromarray(pixels), exif=exif)
    ours = read_image_file(path, "RGB")
    np.testing.assert_array_equal(ours, np.rot90(pixels, k=k))  # numpy reference
    np.testing.assert_array_equal(ours, d2_utils.read_image(path, format="RGB"))
    # the annotation describes the displayed (rotated) image: the mapper accepts it as such
    record = _record(path, height=ours.shape[0], width=ours.shape[1])
    assert _mapper(skip=False)(record)["image"].shape[0] == 3
