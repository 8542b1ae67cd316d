"""The `codino_detr` input pipeline: the official DWD source / test pipelines (official:
DGOD/configs/_base_/datasets/daytime_clear_1024x1024.py and the other *_1024x1024.py domains).

Train: random resize of the canvas size by r ~ U(0.1, 2.0) keeping the ratio (long side -> size*r),
crop of at most CROP_SIZE at a uniform offset (boxes clipped, empty ones dropped), removal of boxes
of width or height <= 0.01 px (an image whose boxes all go is re-drawn: the mapper returns None and
Detectron2's MapDataset samples another), horizontal flip, bottom/right pad to the canvas with 114,
then mmdet's PhotoMetricDistortion (per-operation coin flips, contrast before or after the HSV
stage, hue, channel swap, no clipping to [0, 255]), applied to the padded canvas. Test: long side
to the canvas size, pad. Difficult (VOC) boxes go through the geometry and are then left out of
the training targets. Detectron2 transforms do the geometry.
"""
from __future__ import annotations

import copy

import cv2
import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import transforms as T
from detectron2.structures import Boxes, Instances

from soma_d2.data.mapper_registry import MAPPER_REGISTRY
from soma_d2.data.resize import CV2ResizeTransform  # mmcv's cv2 bilinear, not PIL's antialiasing
from soma_d2.data.robust_mapper import read_image_file

__all__ = ["CoDINODatasetMapper", "codino_detr", "photometric_distortion"]


def photometric_distortion(img: np.ndarray, rng=np.random, is_rgb: bool = True,
                           brightness: float = 32.0, contrast: tuple[float, float] = (0.5, 1.5),
                           saturation: tuple[float, float] = (0.5, 1.5), hue: float = 18.0
                           ) -> np.ndarray:
    """mmdet 3.x PhotoMetricDistortion on a float32 copy of `img` (H, W, 3); `rng` is
    numpy.random or a RandomState (Detectron2 seeds numpy.random per loader worker)."""
    img = img.astype(np.float32)
    mode = rng.randint(2)
    flags = rng.randint(2, size=5)  # brightness, contrast, saturation, hue, swap
    if flags[0]:
        img += rng.uniform(-brightness, brightness)
    alpha = rng.uniform(*contrast)
    if mode == 1 and flags[1]:
        img *= alpha
    to_hsv, from_hsv = ((cv2.COLOR_RGB2HSV, cv2.COLOR_HSV2RGB) if is_rgb
                        else (cv2.COLOR_BGR2HSV, cv2.COLOR_HSV2BGR))
    img = cv2.cvtColor(img, to_hsv)
    if flags[2]:
        factor = rng.uniform(*saturation)
        img[..., 1] *= factor
        if factor > 1:
            img[..., 1] = img[..., 1].clip(0, 1)
    if flags[3]:
        img[..., 0] += rng.uniform(-hue, hue)
        img[..., 0][img[..., 0] > 360] -= 360
        img[..., 0][img[..., 0] < 0] += 360
    img = cv2.cvtColor(img, from_hsv)
    if mode == 0 and flags[1]:
        img *= alpha
    if flags[4]:
        img = img[..., rng.permutation(3)]
    return np.ascontiguousarray(img)


class CoDINODatasetMapper:
    """Detectron2 mapper for Co-DINO (see the module docstring); images leave as float32 CHW."""

    def __init__(self, *, is_train: bool, canvas: int, crop: int, scale_range: tuple[float, float],
                 pad_value: float, image_format: str, photometric: bool, seed: int | None = None):
        if crop > canvas:
            raise ValueError(f"MODEL.CODINO.CROP_SIZE={crop} exceeds INPUT.IMAGE_SIZE={canvas}")
        self.is_train, self.canvas, self.crop = is_train, canvas, crop
        self.scale_range, self.pad_value = scale_range, pad_value
        self.image_format, self.photometric = image_format, photometric
        self.rng = np.random if seed is None else np.random.RandomState(seed)

    def _resize(self, h: int, w: int, target: float) -> T.Transform:
        factor = target / max(h, w)
        return CV2ResizeTransform(h, w, max(int(h * factor + 0.5), 1),
                                  max(int(w * factor + 0.5), 1))

    def __call__(self, dataset_dict: dict) -> dict | None:
        d = copy.deepcopy(dataset_dict)
        image = read_image_file(d["file_name"], self.image_format)
        h, w = image.shape[:2]
        annos = d.pop("annotations", [])
        boxes = np.array([a["bbox"] for a in annos], dtype=np.float32).reshape(-1, 4)
        classes = np.array([a["category_id"] for a in annos], dtype=np.int64)
        difficult = np.array([a.get("difficult", 0) for a in annos], dtype=bool)
        if self.is_train:
            r = self.rng.uniform(*self.scale_range)
            tfms = [self._resize(h, w, int(self.canvas * r))]
            nh, nw = tfms[0].new_h, tfms[0].new_w
            ch, cw = min(nh, self.crop), min(nw, self.crop)
            y0 = int(self.rng.randint(0, nh - ch + 1))
            x0 = int(self.rng.randint(0, nw - cw + 1))
            tfms.append(T.CropTransform(x0, y0, cw, ch))
            tfm = T.TransformList(tfms)
        else:
            tfm = T.TransformList([self._resize(h, w, self.canvas)])
        image = tfm.apply_image(image)
        if self.is_train:
            boxes = tfm.apply_box(boxes) if len(boxes) else boxes
            ih, iw = image.shape[:2]
            boxes[:, 0::2] = boxes[:, 0::2].clip(0, iw)
            boxes[:, 1::2] = boxes[:, 1::2].clip(0, ih)
            keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            boxes, classes, difficult = boxes[keep], classes[keep], difficult[keep]
            if len(boxes):
                big = ((boxes[:, 2] - boxes[:, 0]) > 0.01) & ((boxes[:, 3] - boxes[:, 1]) > 0.01)
                if not big.any():
                    return None  # FilterAnnotations(keep_empty=True): draw another image
                boxes, classes, difficult = boxes[big], classes[big], difficult[big]
            if self.rng.random() < 0.5:
                flip = T.HFlipTransform(image.shape[1])
                image = flip.apply_image(image)
                boxes = flip.apply_box(boxes) if len(boxes) else boxes
        ih, iw = image.shape[:2]
        if ih > self.canvas or iw > self.canvas:
            raise ValueError(f"{d['file_name']}: {ih}x{iw} after the pipeline exceeds the padded "
                             f"canvas INPUT.IMAGE_SIZE={self.canvas}")
        canvas = np.full((self.canvas, self.canvas, 3), self.pad_value, dtype=np.float32)
        canvas[:ih, :iw] = image
        if self.is_train and self.photometric:
            canvas = photometric_distortion(canvas, self.rng, self.image_format == "RGB")
        d["image"] = torch.as_tensor(canvas.transpose(2, 0, 1).copy())
        d["image_size"] = (ih, iw)
        if self.is_train:
            keep = ~difficult
            inst = Instances((self.canvas, self.canvas))
            inst.gt_boxes = Boxes(torch.as_tensor(boxes[keep]).reshape(-1, 4))
            inst.gt_classes = torch.as_tensor(classes[keep], dtype=torch.long)
            d["instances"] = inst
        return d


@MAPPER_REGISTRY.register()
def codino_detr(cfg: CfgNode, is_train: bool) -> CoDINODatasetMapper:
    """Registered as INPUT.DATASET_MAPPER_NAME 'codino_detr'."""
    lo, hi = (float(x) for x in cfg.INPUT.RANDOM_SCALE)
    if not 0 < lo <= hi:
        raise ValueError(f"INPUT.RANDOM_SCALE={tuple(cfg.INPUT.RANDOM_SCALE)} must be 0 < lo <= hi")
    return CoDINODatasetMapper(
        is_train=is_train, canvas=int(cfg.INPUT.IMAGE_SIZE), crop=int(cfg.MODEL.CODINO.CROP_SIZE),
        scale_range=(lo, hi), pad_value=float(cfg.MODEL.CODINO.PAD_VALUE),
        image_format=cfg.INPUT.FORMAT, photometric=bool(cfg.INPUT.PHOTOMETRIC))
