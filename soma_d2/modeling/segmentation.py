"""Semantic segmentation on the SoMA backbone: Detectron2's `SemanticSegmentor` + DG inference.

The model is Detectron2's `SemanticSegmentor` (`build_backbone(cfg)` gives the same SoMA ViT +
pyramid as detection, `build_sem_seg_head` the head named by `MODEL.SEM_SEG_HEAD.NAME`, Semantic
FPN = Detectron2's `SemSegFPNHead` by default; targets are padded with the head's
`ignore_value`). Training only fixes the padding (inputs padded to the pyramid's divisibility,
which Detectron2's ViTDet pyramid reports under a misspelled key). Inference changes, because the
segmentation recipe evaluates differently from Detectron2's single padded pass:

- `MODEL.SEM_SEG_INFERENCE.MODE slide`: overlapping `CROP_SIZE` windows every `STRIDE` pixels,
  logits averaged where windows overlap (mmseg's `slide_inference`), so a model trained on 512
  crops sees 512 windows at test time; `whole` runs the full image at once;
- optional test-time augmentation: `SCALES` (resize factors) and `FLIP`, softmax probabilities
  averaged over the variants;
- every image runs alone, so its prediction does not depend on the padding other images of a
  batch would impose.

Outputs follow Detectron2's contract: `{"sem_seg": (K, height, width)}` per image at the
resolution of the input record (`height`/`width`, i.e. the original image), logits for a single
pass and mean probabilities with TTA (argmax-equivalent for evaluation).

Any head registered in `SEM_SEG_HEADS_REGISTRY` plugs in (e.g. a Mask2Former-style head) if it
follows `SemSegFPNHead`'s contract: built as `Head(cfg, backbone.output_shape())`,
`forward(features, targets)` returns `(None, losses)` in training and `(logits, {})` in eval
with logits of shape (N, K, H, W) at the padded input resolution, and it has `ignore_value`.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from detectron2.config import CfgNode, configurable
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.modeling.meta_arch.semantic_seg import SemanticSegmentor
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.structures import ImageList
from torch.nn import functional as F

__all__ = ["SoMASemanticSegmentor", "default_mapper_name", "is_semantic_segmentor",
           "slide_windows"]


def is_semantic_segmentor(cfg: CfgNode) -> bool:
    """Whether `cfg.MODEL.META_ARCHITECTURE` is a semantic segmentor (Detectron2's
    `SemanticSegmentor` or a subclass, e.g. `SoMASemanticSegmentor`)."""
    try:
        arch = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)
    except KeyError:
        return False
    return isinstance(arch, type) and issubclass(arch, SemanticSegmentor)


def default_mapper_name(cfg: CfgNode) -> str:
    """The built-in input pipeline of the config's model: "sem_seg" or "detection"."""
    return "sem_seg" if is_semantic_segmentor(cfg) else "detection"

INFERENCE_MODES = ("whole", "slide")


def slide_windows(
    height: int, width: int, crop: Sequence[int], stride: Sequence[int]
) -> list[tuple[int, int, int, int]]:
    """(y0, y1, x0, x1) of mmseg's sliding windows: a grid every `stride`, the last window of a
    row/column shifted back inside the image; all windows are min(crop, image) in size."""
    ch, cw = min(int(crop[0]), height), min(int(crop[1]), width)
    sh, sw = int(stride[0]), int(stride[1])
    rows = max(height - ch + sh - 1, 0) // sh + 1
    cols = max(width - cw + sw - 1, 0) // sw + 1
    windows = []
    for r in range(rows):
        for c in range(cols):
            y1, x1 = min(r * sh + ch, height), min(c * sw + cw, width)
            windows.append((y1 - ch, y1, x1 - cw, x1))
    return windows


@META_ARCH_REGISTRY.register()
class SoMASemanticSegmentor(SemanticSegmentor):
    """`SemanticSegmentor` with whole/slide inference and flip/multi-scale TTA (see module doc)."""

    @configurable
    def __init__(
        self,
        *,
        inference_mode: str = "whole",
        crop_size: Sequence[int] = (512, 512),
        stride: Sequence[int] = (341, 341),
        crop_batch: int = 8,
        flip: bool = False,
        scales: Sequence[float] = (1.0,),
        **kwargs,
    ):
        """Args beyond `SemanticSegmentor`'s (backbone, sem_seg_head, pixel_mean, pixel_std):
        the `MODEL.SEM_SEG_INFERENCE` keys (mode, window size and stride in pixels, windows per
        forward pass, horizontal-flip TTA, TTA scales)."""
        super().__init__(**kwargs)
        if inference_mode not in INFERENCE_MODES:
            raise ValueError(
                f"MODEL.SEM_SEG_INFERENCE.MODE={inference_mode!r}; accepted: "
                f"{list(INFERENCE_MODES)}"
            )
        if len(crop_size) != 2 or len(stride) != 2 or min(*crop_size, *stride) <= 0:
            raise ValueError(f"slide crop_size={crop_size} / stride={stride}: two positive ints")
        if any(s > c for s, c in zip(stride, crop_size)):
            raise ValueError(f"slide stride={tuple(stride)} exceeds crop_size={tuple(crop_size)}")
        if not scales or min(scales) <= 0:
            raise ValueError(f"TTA scales={list(scales)} must be positive")
        self.inference_mode = inference_mode
        self.crop_size = tuple(int(v) for v in crop_size)
        self.stride = tuple(int(v) for v in stride)
        self.crop_batch = max(1, int(crop_batch))
        self.flip = bool(flip)
        self.scales = tuple(float(s) for s in scales)

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict:
        ret = super().from_config(cfg)
        inf = cfg.MODEL.SEM_SEG_INFERENCE
        ret.update(
            inference_mode=inf.MODE,
            crop_size=tuple(inf.CROP_SIZE),
            stride=tuple(inf.STRIDE),
            crop_batch=inf.CROP_BATCH,
            flip=inf.FLIP,
            scales=tuple(inf.SCALES),
        )
        return ret

    @property
    def uses_tta(self) -> bool:
        return self.flip or self.scales != (1.0,)

    @property
    def size_divisibility(self) -> int:
        """What input sizes must divide. Detectron2's `SimpleFeaturePyramid` reports it only in
        `padding_constraints`, under a key `ImageList` does not read ("size_divisiblity"), so
        its own `SemanticSegmentor` would not pad and the head's levels would not line up."""
        constraints = getattr(self.backbone, "padding_constraints", None) or {}
        return max(
            int(self.backbone.size_divisibility),
            int(constraints.get("size_divisibility", 0)),
            int(constraints.get("size_divisiblity", 0)),
        )

    def _pad(self, tensors: list[torch.Tensor], pad_value: float = 0.0) -> ImageList:
        constraints = getattr(self.backbone, "padding_constraints", None) or {}
        return ImageList.from_tensors(
            tensors,
            self.size_divisibility,
            pad_value,
            padding_constraints={"square_size": int(constraints.get("square_size", 0))},
        )

    def forward(self, batched_inputs: list[dict]):
        """Training: `SemanticSegmentor`'s losses (inputs and `sem_seg` targets padded to the
        backbone's divisibility, targets with the head's `ignore_value`). Inference: `inference`."""
        if not self.training:
            return self.inference(batched_inputs)
        if any("sem_seg" not in x for x in batched_inputs):
            raise ValueError(
                "SoMASemanticSegmentor in training mode needs a 'sem_seg' target per input; "
                "use a data set with sem_seg_file_name and the segmentation mapper"
            )
        images = [(x["image"].to(self.device) - self.pixel_mean) / self.pixel_std
                  for x in batched_inputs]
        features = self.backbone(self._pad(images).tensor)
        targets = self._pad(
            [x["sem_seg"].to(self.device) for x in batched_inputs], self.sem_seg_head.ignore_value
        ).tensor
        _, losses = self.sem_seg_head(features, targets)
        return losses

    def inference(self, batched_inputs: list[dict]) -> list[dict]:
        """`[{"sem_seg": (K, height, width)}]`, one image at a time (see the module doc)."""
        results = []
        for record in batched_inputs:
            image = record["image"].to(self.device)
            image = ((image - self.pixel_mean) / self.pixel_std)[None]
            h, w = image.shape[-2:]
            logits = self.predict(image)[0]
            height, width = record.get("height", h), record.get("width", w)
            results.append({"sem_seg": sem_seg_postprocess(logits, (h, w), height, width)})
        return results

    def predict(self, image: torch.Tensor) -> torch.Tensor:
        """Logits (single pass) or mean softmax (TTA), (1, K, H, W), of a normalised image."""
        if not self.uses_tta:
            return self._infer(image)
        h, w = image.shape[-2:]
        total = None
        for scale in self.scales:
            scaled = image
            if scale != 1.0:
                size = (max(1, round(h * scale)), max(1, round(w * scale)))
                scaled = F.interpolate(image, size=size, mode="bilinear", align_corners=False)
            for flip in (False, True) if self.flip else (False,):
                out = self._infer(scaled.flip(-1) if flip else scaled)
                if flip:
                    out = out.flip(-1)
                if out.shape[-2:] != (h, w):
                    out = F.interpolate(out, size=(h, w), mode="bilinear", align_corners=False)
                probs = out.softmax(dim=1)
                total = probs if total is None else total + probs
        return total / (len(self.scales) * (2 if self.flip else 1))

    def _infer(self, image: torch.Tensor) -> torch.Tensor:
        if self.inference_mode == "slide":
            return self.slide_inference(image)
        return self.whole_inference(image)

    def whole_inference(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (N, K, H, W) of same-size normalised images, padded as the backbone needs."""
        h, w = images.shape[-2:]
        padded = self._pad(list(images)).tensor
        logits, _ = self.sem_seg_head(self.backbone(padded))
        return logits[..., :h, :w]

    def slide_inference(self, image: torch.Tensor) -> torch.Tensor:
        """Logits (1, K, H, W) averaged over `slide_windows`, `crop_batch` windows per pass."""
        _, _, h, w = image.shape
        windows = slide_windows(h, w, self.crop_size, self.stride)
        total = count = None
        for start in range(0, len(windows), self.crop_batch):
            chunk = windows[start : start + self.crop_batch]
            crops = torch.cat([image[..., y0:y1, x0:x1] for y0, y1, x0, x1 in chunk])
            logits = self.whole_inference(crops)
            if total is None:
                total = logits.new_zeros((1, logits.shape[1], h, w))
                count = logits.new_zeros((1, 1, h, w))
            for (y0, y1, x0, x1), crop_logits in zip(chunk, logits):
                total[0, :, y0:y1, x0:x1] += crop_logits
                count[0, :, y0:y1, x0:x1] += 1
        return total / count
