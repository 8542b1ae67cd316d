"""mmcv's resize for Detectron2 pipelines: cv2 interpolation and mmcv's output-size rounding.

The official pipelines (mmdet / mmseg on mmcv 2.0) resize with `mmcv.imresize`, i.e. `cv2.resize`
with `INTER_LINEAR` for images and `INTER_NEAREST` for label maps. Detectron2's `ResizeTransform`
resizes uint8 images with PIL, whose bilinear filter antialiases when shrinking (a different
image from cv2's at every downscale), and labels with PIL's nearest, which samples pixel centres
where cv2 samples `floor(dst * src / dst_size)` (other rows and columns). `CV2ResizeTransform`
is Detectron2's transform with mmcv's interpolation; `CV2Resize` wraps any Detectron2 resize
augmentation so that it keeps its size rule and resizes with cv2.

Sizes (upstream: mmcv v2.0.0 `mmcv/image/geometric.py`, mmseg 1.2.2 `ResizeShortestEdge`):
`rescale_size` is mmcv's keep-ratio rule (largest factor with long side <= long and short side
<= short, `int(x + 0.5)`); `shortest_edge_size` is mmseg's `ResizeShortestEdge`, which computes a
Detectron2-style (w, h) and then hands it to mmcv's keep-ratio `Resize`, i.e. `rescale_size`
again (the second rounding can move a side by one pixel against Detectron2's rule).
"""
from __future__ import annotations

import cv2
import numpy as np
from detectron2.data import transforms as T

__all__ = ["CV2Resize", "CV2ResizeTransform", "cv2_resize", "rescale_size", "shortest_edge_size"]

# dtypes cv2.resize keeps; other integer label maps go through int32 and back
_CV2_DTYPES = (np.uint8, np.uint16, np.int16, np.int32, np.float32, np.float64)


def cv2_resize(array: np.ndarray, new_h: int, new_w: int, nearest: bool = False) -> np.ndarray:
    """`mmcv.imresize(array, (new_w, new_h), interpolation='nearest' if nearest else
    'bilinear')`, with (H, W, 1) arrays kept 3-D and integer dtypes cv2 lacks round-tripped."""
    interp = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    dtype = array.dtype
    work = array if dtype in _CV2_DTYPES else array.astype(np.int32)
    out = cv2.resize(np.ascontiguousarray(work), (int(new_w), int(new_h)), interpolation=interp)
    if array.ndim == 3 and out.ndim == 2:
        out = out[..., None]
    return out if out.dtype == dtype else out.astype(dtype)


class CV2ResizeTransform(T.ResizeTransform):
    """Detectron2's `ResizeTransform` (same sizes and box/coordinate maths) resizing images with
    cv2 bilinear and segmentation maps with cv2 nearest, as mmcv does (module doc)."""

    def apply_image(self, img: np.ndarray, interp=None) -> np.ndarray:
        if img.shape[:2] != (self.h, self.w):
            raise ValueError(f"CV2ResizeTransform expects a {self.h}x{self.w} input, got "
                             f"{img.shape[0]}x{img.shape[1]}")
        return cv2_resize(img, self.new_h, self.new_w)

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        if segmentation.shape[:2] != (self.h, self.w):
            raise ValueError(f"CV2ResizeTransform expects a {self.h}x{self.w} label map, got "
                             f"{segmentation.shape[0]}x{segmentation.shape[1]}")
        return cv2_resize(segmentation, self.new_h, self.new_w, nearest=True)


class CV2Resize(T.Augmentation):
    """A Detectron2 resize augmentation (e.g. `ResizeShortestEdge`) whose `ResizeTransform` is
    replaced by `CV2ResizeTransform` of the same size: its size rule, mmcv's interpolation."""

    def __init__(self, augmentation: T.Augmentation):
        super().__init__()
        self.augmentation = augmentation

    def get_transform(self, image: np.ndarray) -> T.Transform:
        tfm = self.augmentation.get_transform(image)
        if isinstance(tfm, T.NoOpTransform):
            return tfm
        if not isinstance(tfm, T.ResizeTransform):
            raise TypeError(f"CV2Resize wraps resize augmentations; {self.augmentation!r} "
                            f"returned {type(tfm).__name__}")
        return CV2ResizeTransform(tfm.h, tfm.w, tfm.new_h, tfm.new_w)

    def __repr__(self) -> str:
        return f"CV2Resize({self.augmentation!r})"


def rescale_size(h: int, w: int, long: float, short: float) -> tuple[int, int]:
    """mmcv `rescale_size((w, h), (long, short))` with keep_ratio -> (new_h, new_w)."""
    long, short = max(long, short), min(long, short)
    factor = min(long / max(h, w), short / min(h, w))
    return int(h * factor + 0.5), int(w * factor + 0.5)


def shortest_edge_size(h: int, w: int, short: int, max_size: int) -> tuple[int, int]:
    """mmseg `ResizeShortestEdge(scale=short, max_size)` -> (new_h, new_w) (module doc)."""
    size = float(short)
    scale = size / min(h, w)
    new_h, new_w = (size, scale * w) if h < w else (scale * h, size)
    if max(new_h, new_w) > max_size:
        scale = max_size / max(new_h, new_w)
        new_h, new_w = new_h * scale, new_w * scale
    target_h, target_w = int(new_h + 0.5), int(new_w + 0.5)
    return rescale_size(h, w, target_w, target_h)
