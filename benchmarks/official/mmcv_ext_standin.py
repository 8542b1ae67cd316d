"""A stand-in for mmcv's compiled ``mmcv._ext`` (absent from mmcv-lite), built on torchvision.

mmcv-lite 2.0.0 ships the Python side of ``mmcv.ops`` but not the C++/CUDA extension, so
``import mmcv.ops`` fails at ``ext_loader.load_ext('_ext', [...])``. :func:`install` puts this
module into ``sys.modules['mmcv._ext']`` before mmcv.ops is imported. The ops the official
Co-DINO / Mask2Former need on CPU are implemented: ``nms`` (torchvision's, offset 0),
``softnms`` (mmcv's CPU kernel's loop, including its swap-with-last compaction, which fixes the
order of equal scores), ``roi_align_forward`` / ``roi_align_backward`` (torchvision's RoIAlign,
average pooling; mmcv's CPU RoIAlign and torchvision's are the same Detectron2 kernel).
Multi-scale deformable attention needs nothing here: on CPU tensors mmcv itself takes
``multi_scale_deformable_attn_pytorch``. Every other op name exists (``load_ext`` only checks
``hasattr``) and raises NotImplementedError naming the op when called.
"""
from __future__ import annotations

import sys
import types

import torch
import torchvision

__all__ = ["install"]

_METHODS = {0: "naive", 1: "linear", 2: "gaussian"}


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, offset: int = 0
        ) -> torch.Tensor:
    """Indices kept by hard NMS, by decreasing score (mmcv ``ext_module.nms``)."""
    if offset != 0:
        raise NotImplementedError("mmcv._ext stand-in: nms with offset=1 (legacy boxes)")
    return torchvision.ops.nms(boxes.float(), scores.float(), float(iou_threshold))


def softnms(boxes: torch.Tensor, scores: torch.Tensor, dets: torch.Tensor, iou_threshold: float,
            sigma: float, min_score: float, method: int, offset: int) -> torch.Tensor:
    """mmcv's ``softnms_cpu``: fills ``dets`` (N, 5) in selection order, returns the kept
    indices. Each round picks the first maximum of the remaining scores, swaps it to the front,
    decays the rest by the method's weight and drops those below ``min_score`` by moving the
    last remaining box into their place."""
    if method not in _METHODS:
        raise ValueError(f"mmcv._ext stand-in: softnms method {method}")
    box = boxes.detach().float().clone()
    sc = scores.detach().float().clone()
    n = box.shape[0]
    inds = torch.arange(n)
    area = (box[:, 2] - box[:, 0] + offset) * (box[:, 3] - box[:, 1] + offset)
    i = 0
    while i < n:
        rel = int(torch.argmax(sc[i:n])) + i  # first maximum, as the kernel's strict '<' scan
        for t in (box, sc, area, inds):
            t[[i, rel]] = t[[rel, i]]
        dets[i, :4] = box[i]
        dets[i, 4] = sc[i]
        rest = slice(i + 1, n)
        lt = torch.maximum(box[i, :2], box[rest, :2])
        rb = torch.minimum(box[i, 2:], box[rest, 2:])
        wh = (rb - lt + offset).clamp_min(0)
        inter = wh[:, 0] * wh[:, 1]
        ovr = inter / (area[i] + area[rest] - inter)
        if method == 0:
            weight = torch.where(ovr >= iou_threshold, 0.0, 1.0)
        elif method == 1:
            weight = torch.where(ovr >= iou_threshold, 1 - ovr, 1.0)
        else:
            weight = torch.exp(-(ovr * ovr) / sigma)
        sc[rest] = sc[rest] * weight
        # the kernel's in-loop compaction, replayed on the already-decayed scores
        pos = i + 1
        while pos < n:
            if sc[pos] < min_score:
                last = n - 1
                for t in (box, sc, area, inds):
                    t[pos] = t[last]
                n -= 1
            else:
                pos += 1
        i += 1
    return inds[:n].clone()


def roi_align_forward(input: torch.Tensor, rois: torch.Tensor, output: torch.Tensor,
                      argmax_y: torch.Tensor, argmax_x: torch.Tensor, aligned_height: int,
                      aligned_width: int, spatial_scale: float, sampling_ratio: int,
                      pool_mode: int, aligned: bool) -> None:
    """mmcv RoIAlign forward (average pooling) into ``output``."""
    if pool_mode != 1:
        raise NotImplementedError("mmcv._ext stand-in: roi_align with pool_mode='max'")
    output.copy_(torchvision.ops.roi_align(input, rois, (aligned_height, aligned_width),
                                           spatial_scale, sampling_ratio, aligned))


def roi_align_backward(grad_output: torch.Tensor, rois: torch.Tensor, argmax_y: torch.Tensor,
                       argmax_x: torch.Tensor, grad_input: torch.Tensor, aligned_height: int,
                       aligned_width: int, spatial_scale: float, sampling_ratio: int,
                       pool_mode: int, aligned: bool) -> None:
    """mmcv RoIAlign backward (average pooling) into ``grad_input``."""
    if pool_mode != 1:
        raise NotImplementedError("mmcv._ext stand-in: roi_align with pool_mode='max'")
    b, c, h, w = grad_input.shape
    grad_input.copy_(torch.ops.torchvision._roi_align_backward(
        grad_output, rois, spatial_scale, aligned_height, aligned_width, b, c, h, w,
        sampling_ratio, aligned))


_IMPLEMENTED = {"nms": nms, "softnms": softnms, "roi_align_forward": roi_align_forward,
                "roi_align_backward": roi_align_backward}


def _missing(name: str):
    def op(*args, **kwargs):
        raise NotImplementedError(
            f"mmcv._ext stand-in (benchmarks/official/mmcv_ext_standin.py): op {name!r} is not "
            "implemented; the official models compared here should not need it")
    op.__name__ = name
    return op


def install() -> types.ModuleType:
    """Register the stand-in as ``mmcv._ext`` (idempotent); call before importing mmcv.ops."""
    existing = sys.modules.get("mmcv._ext")
    if existing is not None and getattr(existing, "__standin__", False):
        return existing
    module = types.ModuleType("mmcv._ext", __doc__)
    module.__standin__ = True
    for name, fn in _IMPLEMENTED.items():
        setattr(module, name, fn)
    module.__getattr__ = lambda name: (_missing(name) if not name.startswith("__")
                                       else (_ for _ in ()).throw(AttributeError(name)))
    sys.modules["mmcv._ext"] = module
    import mmcv

    mmcv._ext = module
    return module
