"""mmseg's segmentation transforms as Detectron2 augmentations (official semantics, sheet 2.3-2.4).

- `KeepRatioResize(long, short)`: mmcv's keep-ratio rescale into (long, short): the largest factor
  with long side <= `long` and short side <= `short` (it may upscale); sizes int(x + 0.5). The
  official test resize of each target data set.
- `RatioRandomResize(long, short, ratio_range)`: mmseg `RandomResize(scale, ratio_range,
  keep_ratio=True)`: r ~ U(ratio_range), then `KeepRatioResize(int(long r), int(short r))`.
- `ChoiceShortestEdgeResize(short_edges, max_size)`: mmseg `RandomChoiceResize(scales,
  resize_type='ResizeShortestEdge', max_size)` (MS-512 / MS-1024): a short side drawn uniformly
  from the list, long side capped, with mmseg's two roundings (`soma_d2.data.resize`).

All three resize as mmcv does, with cv2 (bilinear images, nearest labels; `CV2ResizeTransform`),
not with PIL as Detectron2's `ResizeTransform` does.
- `SegPhotoMetricDistortion`: mmseg's `PhotoMetricDistortion` on uint8 with clipping after every
  step: brightness +U(-32, 32), contrast xU(0.5, 1.5) before or after (random mode), saturation
  xU(0.5, 1.5) and hue +randint(-18, 18) mod 180 in OpenCV HSV, each with probability 0.5, no
  channel swap.
"""
from __future__ import annotations

import cv2
import numpy as np
from detectron2.data import transforms as T
from fvcore.transforms.transform import NoOpTransform, Transform

from soma_d2.data.resize import CV2ResizeTransform, rescale_size, shortest_edge_size

__all__ = ["ChoiceShortestEdgeResize", "KeepRatioResize", "RatioRandomResize",
           "SegPhotoMetricDistortion", "keep_ratio_size"]

keep_ratio_size = rescale_size  # mmcv keep-ratio (h, w) -> (new_h, new_w); the older name


class KeepRatioResize(T.Augmentation):
    """See the module doc."""

    def __init__(self, long: int, short: int):
        super().__init__()
        self.long, self.short = int(long), int(short)

    def get_transform(self, image):
        h, w = image.shape[:2]
        nh, nw = rescale_size(h, w, self.long, self.short)
        return CV2ResizeTransform(h, w, nh, nw)


class RatioRandomResize(T.Augmentation):
    """See the module doc."""

    def __init__(self, long: int, short: int, ratio_range: tuple[float, float]):
        super().__init__()
        self.long, self.short = int(long), int(short)
        self.ratio_range = (float(ratio_range[0]), float(ratio_range[1]))

    def get_transform(self, image):
        r = np.random.uniform(*self.ratio_range)
        h, w = image.shape[:2]
        nh, nw = rescale_size(h, w, int(self.long * r), int(self.short * r))
        return CV2ResizeTransform(h, w, nh, nw)


class ChoiceShortestEdgeResize(T.Augmentation):
    """See the module doc."""

    def __init__(self, short_edges: list[int], max_size: int):
        super().__init__()
        if not short_edges:
            raise ValueError("ChoiceShortestEdgeResize needs at least one short-side length")
        self.short_edges = [int(v) for v in short_edges]
        self.max_size = int(max_size)

    def get_transform(self, image):
        short = self.short_edges[np.random.randint(len(self.short_edges))]
        h, w = image.shape[:2]
        nh, nw = shortest_edge_size(h, w, short, self.max_size)
        return CV2ResizeTransform(h, w, nh, nw)


class _PhotoMetricTransform(Transform):
    def __init__(self, brightness, contrast, contrast_first, saturation, hue, rgb: bool):
        super().__init__()
        self._set_attributes(locals())

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        img = img.astype(np.uint8)

        def scale(x, alpha=1.0, beta=0.0):
            return np.clip(x.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)

        if self.brightness is not None:
            img = scale(img, beta=self.brightness)
        if self.contrast is not None and self.contrast_first:
            img = scale(img, alpha=self.contrast)
        to_hsv, from_hsv = ((cv2.COLOR_RGB2HSV, cv2.COLOR_HSV2RGB) if self.rgb
                            else (cv2.COLOR_BGR2HSV, cv2.COLOR_HSV2BGR))
        if self.saturation is not None:
            hsv = cv2.cvtColor(img, to_hsv)
            hsv[..., 1] = scale(hsv[..., 1], alpha=self.saturation)
            img = cv2.cvtColor(hsv, from_hsv)
        if self.hue is not None:
            hsv = cv2.cvtColor(img, to_hsv)
            hsv[..., 0] = (hsv[..., 0].astype(int) + self.hue) % 180
            img = cv2.cvtColor(hsv, from_hsv)
        if self.contrast is not None and not self.contrast_first:
            img = scale(img, alpha=self.contrast)
        return img

    def apply_coords(self, coords):
        return coords

    def apply_segmentation(self, segmentation):
        return segmentation


class SegPhotoMetricDistortion(T.Augmentation):
    """See the module doc. `image_format` "RGB" or "BGR" (the HSV conversion follows it)."""

    def __init__(self, image_format: str = "RGB"):
        super().__init__()
        self.rgb = image_format.upper() == "RGB"

    def get_transform(self, image):
        rand = np.random
        brightness = rand.uniform(-32, 32) if rand.randint(2) else None
        mode = rand.randint(2)
        contrast_first = contrast = None
        if mode == 1:
            contrast = rand.uniform(0.5, 1.5) if rand.randint(2) else None
            contrast_first = True
        saturation = rand.uniform(0.5, 1.5) if rand.randint(2) else None
        hue = rand.randint(-18, 18) if rand.randint(2) else None
        if mode == 0:
            contrast = rand.uniform(0.5, 1.5) if rand.randint(2) else None
            contrast_first = False
        if brightness is None and contrast is None and saturation is None and hue is None:
            return NoOpTransform()
        return _PhotoMetricTransform(brightness, contrast, contrast_first, saturation, hue,
                                     self.rgb)
