"""The base of every input pipeline: Detectron2's `DatasetMapper` with image decoding that
survives bad files (the detection pipeline is `detection_mapper`, segmentation `seg_mapper`).

Data sets assembled from many sources hold surprises that should cost one image, not a multi-day
run: files that do not decode or are truncated, grayscale, RGBA, palette or 16-bit images, EXIF
rotations. `read_image_file` decodes all of these into the configured format (16-bit values are
scaled to 8 bits instead of being clipped to white, alpha is dropped, the EXIF orientation is
applied) and raises `BadImageError` naming the file otherwise. `RobustDatasetMapper` either lets
that error stop training (default) or, with `DATALOADER.SKIP_BAD_IMAGES`, returns None for the
file, which makes Detectron2's `MapDataset` draw another image, and logs the running count of
skipped files. Test-time mappers never skip: an evaluation must see every image.
"""
from __future__ import annotations

import copy
import logging
import struct
from typing import Any

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import DatasetMapper
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from PIL import Image, ImageOps

__all__ = [
    "BadImageError",
    "RobustDatasetMapper",
    "read_image_file",
    "read_label_file",
]

logger = logging.getLogger(__name__)

_DECODE_ERRORS = (OSError, SyntaxError, ValueError, struct.error, EOFError, IndexError,
                  Image.DecompressionBombError)
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


class BadImageError(ValueError):
    """An image file cannot be decoded (missing, corrupt, truncated) or has the wrong size."""


def _to_8bit(image: Image.Image) -> Image.Image:
    """16-bit/32-bit integer and float images as 8-bit grayscale (scaled, not clipped)."""
    if image.mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(image).astype(np.float64) / 257.0  # 65535 -> 255
    elif image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
    else:
        return image
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), mode="L")


def read_image_file(path: str, image_format: str | None) -> np.ndarray:
    """Decode `path` into an HWC array in `image_format` (see Detectron2's `read_image`).

    Grayscale, palette, RGBA and 16-bit images are converted; the EXIF orientation is applied.
    Raises BadImageError naming the file when it cannot be decoded completely.
    """
    try:
        with Image.open(path) as image:
            image.load()  # decode now: truncated data fails here, not later in an augmentation
            image = ImageOps.exif_transpose(image)
            image = _to_8bit(image)
            return utils.convert_PIL_to_numpy(image, image_format)
    except _DECODE_ERRORS as e:
        raise BadImageError(f"cannot decode image {path}: {type(e).__name__}: {e}") from e


def read_label_file(path: str) -> np.ndarray:
    """The integer ids of a segmentation label (palette indices, 8- or 16-bit grey values).

    Unlike an image, a label is not converted: a palette file gives its indices (converting it to
    grey, as Detectron2's `read_image(path, "L")` does, would give luminances). Raises
    BadImageError naming the file when it cannot be decoded or is not single-channel.
    """
    from .catalog import DatasetFormatError
    from .seg_labels import read_label_png

    try:
        return read_label_png(path)
    except DatasetFormatError as e:
        raise BadImageError(f"bad label {path}: {e}") from e
    except _DECODE_ERRORS as e:
        raise BadImageError(f"cannot decode label {path}: {type(e).__name__}: {e}") from e


class RobustDatasetMapper(DatasetMapper):
    """Detectron2's `DatasetMapper` with `read_image_file` / `read_label_file` and optional
    skipping of bad images (labels included); the base of the detection and segmentation mappers.
    """

    def __init__(self, *args: Any, skip_bad_images: bool = False, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.skip_bad_images = bool(skip_bad_images) and self.is_train
        self.num_skipped = 0  # per process: each loader worker counts its own

    @classmethod
    def from_soma_cfg(cls, cfg: CfgNode, is_train: bool, augmentations: list[T.Augmentation],
                      **kwargs: Any) -> RobustDatasetMapper:
        """This mapper with the settings every input pipeline takes from the config (INPUT.FORMAT,
        DATALOADER.SKIP_BAD_IMAGES), so the detection and segmentation builders cannot read them
        differently; `kwargs` are a subclass's own arguments."""
        return cls(is_train=is_train, augmentations=augmentations, image_format=cfg.INPUT.FORMAT,
                   skip_bad_images=cfg.DATALOADER.SKIP_BAD_IMAGES, **kwargs)

    def _load(self, dataset_dict: dict) -> tuple[np.ndarray, np.ndarray | None]:
        """The image (its size checked against, or written into, the record) and the label."""
        image = read_image_file(dataset_dict["file_name"], self.image_format)
        try:
            utils.check_image_size(dataset_dict, image)
        except utils.SizeMismatchError as e:
            raise BadImageError(str(e)) from e
        label_path = dataset_dict.pop("sem_seg_file_name", None)
        if label_path is None:
            return image, None
        label = read_label_file(label_path)
        if label.shape != image.shape[:2]:
            raise BadImageError(
                f"label {label_path} is {label.shape[0]}x{label.shape[1]} (HxW) but image "
                f"{dataset_dict['file_name']} is {image.shape[0]}x{image.shape[1]}"
            )
        return image, label

    def _skip(self, dataset_dict: dict, error: BadImageError) -> None:
        self.num_skipped += 1
        count = self.num_skipped
        logger.warning("DATALOADER.SKIP_BAD_IMAGES: skipping %s (%s); %d image(s) skipped so far "
                       "by this loader", dataset_dict.get("file_name"), error, count)

    def __call__(self, dataset_dict: dict) -> dict | None:
        """Map one record; None (skip) for an undecodable image when skipping is on."""
        dataset_dict = copy.deepcopy(dataset_dict)
        try:
            image, sem_seg_gt = self._load(dataset_dict)
        except BadImageError as e:
            if not self.skip_bad_images:
                raise BadImageError(
                    f"{str(e).rstrip('.')}. Fix or remove the file, or set "
                    "DATALOADER.SKIP_BAD_IMAGES True to skip "
                    "such images during training"
                ) from e
            self._skip(dataset_dict, e)
            return None
        return self._map_image(dataset_dict, image, sem_seg_gt)

    def _map_image(self, dataset_dict: dict, image: np.ndarray,
                   sem_seg_gt: np.ndarray | None = None) -> dict:
        # Detectron2's DatasetMapper.__call__ after its image (and label) reading, unchanged
        aug_input = T.AugInput(image, sem_seg=sem_seg_gt)
        transforms = self.augmentations(aug_input)
        image, sem_seg_gt = aug_input.image, aug_input.sem_seg
        image_shape = image.shape[:2]
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if sem_seg_gt is not None:
            dataset_dict["sem_seg"] = torch.as_tensor(sem_seg_gt.astype("long"))
        if self.proposal_topk is not None:
            utils.transform_proposals(
                dataset_dict, image_shape, transforms, proposal_topk=self.proposal_topk
            )
        if not self.is_train:
            dataset_dict.pop("annotations", None)
            dataset_dict.pop("sem_seg_file_name", None)
            return dataset_dict
        if "annotations" in dataset_dict:
            self._transform_annotations(dataset_dict, transforms, image_shape)
        return dataset_dict
