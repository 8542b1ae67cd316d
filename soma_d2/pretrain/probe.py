"""Linear probes on frozen ViT features: are the foundation model's features useful?

Two questions, each answered by a multinomial logistic regression on frozen features of scenes
the pretraining never saw: which object class is in a box (RoI-pooled patch features; trained on
clear-day objects, tested on held-out clear-day objects and on the night/rain/fog domains, the
detector's situation), and which condition an image was taken in (mean-pooled patch features). Object classes are also
probed within each condition: are they linearly separable at night at all?
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torchvision.ops import roi_align

from ..data.dwd import DWD_CLASSES
from ..data.synthetic import domain_textures, render_scene
from ..modeling.vit import DinoVisionTransformer
from .scene_bank import CONDITIONS, PIXEL_MEAN, PIXEL_STD

__all__ = ["ProbeData", "ProbeScores", "fit_linear_probe", "probe_vit", "render_probe_data"]

_PROBE_SEED = 5000  # apart from the detection data (0, 1, ...) and the pretraining bank (1000+)


@dataclass
class ProbeData:
    """Images (N, 3, S, S) normalised, their condition index, and object boxes/classes/image ids."""

    images: torch.Tensor
    conditions: torch.Tensor
    boxes: torch.Tensor
    classes: torch.Tensor
    owners: torch.Tensor


@dataclass
class ProbeScores:
    """Accuracies (0-1) of the object-class probe: trained and tested within clear day
    (`object_source`), trained on clear day and tested on each other condition
    (`object_transfer`), trained and tested within each other condition (`object_within`); and
    of the condition probe (`condition`, 5 classes)."""

    object_source: float
    object_transfer: dict[str, float]
    object_within: dict[str, float]
    condition: float

    @property
    def mean_transfer(self) -> float:
        return sum(self.object_transfer.values()) / len(self.object_transfer)

    @property
    def mean_within(self) -> float:
        return sum(self.object_within.values()) / len(self.object_within)


def render_probe_data(per_condition: int, size: int = 256, seed: int = 0) -> ProbeData:
    """`per_condition` fresh scenes under each of the five conditions, with their objects."""
    images, conditions, boxes, classes, owners = [], [], [], [], []
    for c, condition in enumerate(CONDITIONS):
        textures = domain_textures(_PROBE_SEED + seed, c, size)
        for i in range(per_condition):
            rng = np.random.default_rng([_PROBE_SEED + seed, c, i])
            image, objects = render_scene(rng, condition, size, DWD_CLASSES[i % 7], textures)
            for o in objects:
                if not o.difficult:
                    boxes.append(o.box)
                    classes.append(DWD_CLASSES.index(o.name))
                    owners.append(len(images))
            images.append((np.asarray(image, np.float32) - PIXEL_MEAN) / PIXEL_STD)
            conditions.append(c)
    return ProbeData(
        torch.from_numpy(np.stack(images).transpose(0, 3, 1, 2).copy()),
        torch.tensor(conditions), torch.tensor(boxes, dtype=torch.float32) + torch.tensor(
            [0.0, 0.0, 1.0, 1.0]), torch.tensor(classes), torch.tensor(owners))


@torch.no_grad()
def _features(vit: DinoVisionTransformer, data: ProbeData,
              batch: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    vit.eval()
    maps = [next(iter(vit(data.images[i : i + batch]).values()))
            for i in range(0, len(data.images), batch)]
    fmap = torch.cat(maps)
    rois = torch.cat([data.owners[:, None].float(), data.boxes], dim=1)
    stride = data.images.shape[-1] / fmap.shape[-1]
    objects = roi_align(fmap, rois, output_size=(2, 2), spatial_scale=1.0 / stride,
                        sampling_ratio=2, aligned=True).flatten(1)
    return objects, fmap.mean(dim=(2, 3))


def fit_linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor,
                     test_y: torch.Tensor, weight_decay: float = 1e-3, iters: int = 200) -> float:
    """Accuracy on the test set of an L2-regularised softmax regression fit by L-BFGS."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    x, xt = (train_x - mean) / std, (test_x - mean) / std
    classes = int(max(train_y.max(), test_y.max())) + 1
    w = torch.zeros(x.shape[1], classes, requires_grad=True)
    b = torch.zeros(classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=iters, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ w + b, train_y) + weight_decay * w.pow(
            2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return float(((xt @ w + b).argmax(1) == test_y).float().mean())


def probe_vit(vit: DinoVisionTransformer, data: ProbeData) -> ProbeScores:
    """Fit the probes on `data`. Object probes train on the objects of the first half of a
    condition's images and test on the second half (or on all objects of another condition);
    the condition probe trains on even-indexed images and tests on the odd ones."""
    objects, images = _features(vit, data)
    per = int((data.conditions == 0).sum())
    owner_cond = data.conditions[data.owners]
    first_half = (data.owners - per * owner_cond) < per // 2

    def objects_of(condition: int, half: bool) -> tuple[torch.Tensor, torch.Tensor]:
        keep = (owner_cond == condition) & (first_half == half)
        return objects[keep], data.classes[keep]

    source_train = objects_of(0, True)
    source = fit_linear_probe(*source_train, *objects_of(0, False))
    transfer, within = {}, {}
    for c, condition in enumerate(CONDITIONS[1:], start=1):
        every = owner_cond == c
        transfer[condition] = fit_linear_probe(*source_train, objects[every], data.classes[every])
        within[condition] = fit_linear_probe(*objects_of(c, True), *objects_of(c, False))
    index = torch.arange(len(images))
    even, odd = index % 2 == 0, index % 2 == 1
    cond = fit_linear_probe(images[even], data.conditions[even], images[odd],
                            data.conditions[odd])
    return ProbeScores(source, transfer, within, cond)
