"""A small synthetic "Diverse Weather" data set, written in exactly the DWD layout.

It lets a newcomer run the whole pipeline (registration, training, per-domain evaluation, the DG
table) in minutes on a CPU without downloading anything. Street scenes (sky, horizon, road, lane
marks, buildings, trees) hold 1-6 objects of the 7 DWD classes, each drawn with a shape, size,
aspect ratio and colour that stay consistent per class so that a tiny detector can learn them;
objects are placed with perspective (smaller towards the horizon), drawn far-to-near so nearer
ones occlude farther ones. The five domains differ only in appearance, as in the benchmark: clear
day (the source), night (dark, low contrast, light blobs, sensor noise), dusk rain (warm tint,
streaks, blur), night rain, and fog whose density grows with distance. Every image is drawn from
its own random generator seeded by (seed, domain, index), so the output is byte-identical for a
seed whatever the process layout. `generate_synthetic_semseg` writes the same scenes with
per-pixel Cityscapes train-id labels, for the segmentation pipeline.
"""
from __future__ import annotations

import math
import multiprocessing as mp
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, NamedTuple
from xml.sax.saxutils import escape

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .dwd import DWD_CLASSES, DWD_DOMAINS, DWD_SOURCE_DOMAIN
from .seg_datasets import CITYSCAPES_STUFF_CLASSES, SYNTHETIC_SEG_LAYOUT

__all__ = [
    "CLASS_SIZES",
    "SEG_TRAIN_IDS",
    "SceneObject",
    "Textures",
    "domain_textures",
    "generate_synthetic_dwd",
    "generate_synthetic_semseg",
    "render_scene",
    "render_scene_with_labels",
    "voc_xml",
]

SOURCE_TRAIN_FRACTION = 0.7
JPEG_QUALITY = 90
# (width, height) of each class at the front of the scene, as a fraction of the image size;
# objects farther away are scaled down to no less than MIN_DEPTH of it
CLASS_SIZES = {
    "bus": (0.46, 0.28),
    "bike": (0.17, 0.12),
    "car": (0.28, 0.15),
    "motor": (0.18, 0.14),
    "person": (0.11, 0.28),
    "rider": (0.17, 0.30),
    "truck": (0.44, 0.31),
}
# relative frequency of the classes after the first object of an image (which cycles through all
# classes so that every class appears in any split of at least 7 images)
CLASS_FREQUENCY = {"bus": 1, "bike": 1, "car": 3, "motor": 1, "person": 2, "rider": 1, "truck": 1}
VEHICLES = ("bus", "car", "motor", "truck")
MIN_DEPTH = 0.45
SKY = {
    "daytime_clear": ((80, 140, 225), (185, 215, 245)),
    "night_sunny": ((4, 6, 16), (28, 32, 52)),
    "dusk_rainy": ((70, 62, 105), (245, 150, 85)),
    "night_rainy": ((6, 6, 12), (30, 30, 40)),
    "daytime_foggy": ((196, 198, 202), (212, 214, 216)),
}

# segmentation variant: what the label maps hold, in Cityscapes train ids (the 7 DWD classes
# and the parts of the background; a rider is labelled rider as a whole, bicycle included)
_CS = CITYSCAPES_STUFF_CLASSES.index
SEG_TRAIN_IDS = {
    "bus": _CS("bus"), "bike": _CS("bicycle"), "car": _CS("car"), "motor": _CS("motorcycle"),
    "person": _CS("person"), "rider": _CS("rider"), "truck": _CS("truck"),
    "road": _CS("road"), "sidewalk": _CS("sidewalk"), "building": _CS("building"),
    "vegetation": _CS("vegetation"), "terrain": _CS("terrain"), "sky": _CS("sky"),
}


@dataclass
class SceneObject:
    """One drawn object: class, tight pixel box (inclusive, 0-based), depth and VOC flags."""

    name: str
    box: tuple[int, int, int, int]
    depth: float
    truncated: int = 0
    difficult: int = 0


@dataclass
class _Painter:
    """Draws on the image and on a depth layer at once, and tracks the extent of each object.

    With a `label_draw` it also paints the object's Cityscapes train id on a label layer (the
    segmentation variant); the image and depth layers do not depend on it.
    """

    draw: ImageDraw.ImageDraw
    depth_draw: ImageDraw.ImageDraw
    size: int
    depth: int = 0
    extent: list[float] = field(default_factory=lambda: [math.inf, math.inf, -math.inf, -math.inf])
    label_draw: ImageDraw.ImageDraw | None = None
    label: int = 255

    def start(self, depth: float, label: int = 255) -> None:
        self.depth = int(round(depth * 255))
        self.label = label
        self.extent = [math.inf, math.inf, -math.inf, -math.inf]

    def _grow(self, x0: float, y0: float, x1: float, y1: float) -> None:
        e = self.extent
        e[0], e[1] = min(e[0], x0, x1), min(e[1], y0, y1)
        e[2], e[3] = max(e[2], x0, x1), max(e[3], y0, y1)

    def rect(self, xy, fill) -> None:
        xy = [round(v) for v in xy]
        self.draw.rectangle(xy, fill=fill)
        self.depth_draw.rectangle(xy, fill=self.depth)
        if self.label_draw is not None:
            self.label_draw.rectangle(xy, fill=self.label)
        self._grow(*xy)

    def ellipse(self, xy, fill=None, outline=None, width: int = 1) -> None:
        xy = [round(v) for v in xy]
        self.draw.ellipse(xy, fill=fill, outline=outline, width=width)
        self.depth_draw.ellipse(xy, fill=self.depth if fill else None, outline=self.depth,
                                width=width)
        if self.label_draw is not None:
            self.label_draw.ellipse(xy, fill=self.label if fill else None, outline=self.label,
                                    width=width)
        self._grow(*xy)

    def polygon(self, points, fill) -> None:
        points = [(round(x), round(y)) for x, y in points]
        self.draw.polygon(points, fill=fill)
        self.depth_draw.polygon(points, fill=self.depth)
        if self.label_draw is not None:
            self.label_draw.polygon(points, fill=self.label)
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        self._grow(min(xs), min(ys), max(xs), max(ys))

    def line(self, points, fill, width: int) -> None:
        points = [(round(x), round(y)) for x, y in points]
        self.draw.line(points, fill=fill, width=width)
        self.depth_draw.line(points, fill=self.depth, width=width)
        if self.label_draw is not None:
            self.label_draw.line(points, fill=self.label, width=width)
        half = (width - 1) / 2
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        self._grow(min(xs) - half, min(ys) - half, max(xs) + half, max(ys) + half)


def _jitter(rng: np.random.Generator, color, amount: int = 12) -> tuple[int, int, int]:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in color)


def _wheel(p: _Painter, cx: float, cy: float, r: float, hub=(150, 150, 150)) -> None:
    p.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(18, 18, 18))
    p.ellipse((cx - r * 0.45, cy - r * 0.45, cx + r * 0.45, cy + r * 0.45), fill=hub)


def _draw_bus(p, x0, y0, w, h, rng, facing):
    body = _jitter(rng, (238, 192, 36), 10)
    p.rect((x0, y0, x0 + w, y0 + h * 0.86), body)
    n = 5
    gap = w * 0.035
    win_w = (w - gap * (n + 1)) / n
    for i in range(n):
        wx = x0 + gap + i * (win_w + gap)
        p.rect((wx, y0 + h * 0.12, wx + win_w, y0 + h * 0.42), (40, 52, 78))
    p.rect((x0, y0 + h * 0.58, x0 + w, y0 + h * 0.64), (60, 60, 60))
    r = h * 0.14
    for fx in (0.2, 0.8):
        _wheel(p, x0 + w * fx, y0 + h - r, r)


def _draw_truck(p, x0, y0, w, h, rng, facing):
    cab_w = w * 0.26
    cargo = _jitter(rng, (212, 214, 220), 8)
    cab = _jitter(rng, (38, 112, 62), 10)
    if facing > 0:
        box_x, cab_x = x0, x0 + w - cab_w
    else:
        box_x, cab_x = x0 + cab_w, x0
    p.rect((box_x, y0, box_x + w - cab_w - 2, y0 + h * 0.82), cargo)
    p.rect((cab_x, y0 + h * 0.32, cab_x + cab_w, y0 + h * 0.86), cab)
    win_x = cab_x + cab_w * (0.45 if facing > 0 else 0.1)
    p.rect((win_x, y0 + h * 0.38, win_x + cab_w * 0.45, y0 + h * 0.56), (150, 190, 215))
    p.rect((x0, y0 + h * 0.8, x0 + w, y0 + h * 0.86), (50, 50, 50))
    r = h * 0.14
    for fx in (0.14, 0.34, 0.86 if facing > 0 else 0.12):
        cx = x0 + w * (fx if facing > 0 else 1 - fx)
        _wheel(p, cx, y0 + h - r, r)


def _draw_car(p, x0, y0, w, h, rng, facing):
    body = _jitter(rng, (205, 28, 30) if rng.random() < 0.5 else (30, 62, 205), 15)
    p.polygon(
        [(x0 + w * 0.22, y0 + h * 0.45), (x0 + w * 0.32, y0), (x0 + w * 0.7, y0),
         (x0 + w * 0.82, y0 + h * 0.45)],
        body,
    )
    p.polygon(
        [(x0 + w * 0.3, y0 + h * 0.42), (x0 + w * 0.36, y0 + h * 0.1),
         (x0 + w * 0.66, y0 + h * 0.1), (x0 + w * 0.75, y0 + h * 0.42)],
        (170, 200, 225),
    )
    p.rect((x0 + w * 0.5 - 1, y0 + h * 0.08, x0 + w * 0.52, y0 + h * 0.44), body)
    p.rect((x0, y0 + h * 0.42, x0 + w, y0 + h * 0.8), body)
    r = h * 0.2
    for fx in (0.2, 0.8):
        _wheel(p, x0 + w * fx, y0 + h - r, r)


def _draw_motor(p, x0, y0, w, h, rng, facing):
    r = h * 0.3
    body = _jitter(rng, (36, 36, 42), 6)
    back, front = (x0 + r, x0 + w - r) if facing > 0 else (x0 + w - r, x0 + r)
    _wheel(p, back, y0 + h - r, r, hub=(120, 120, 125))
    _wheel(p, front, y0 + h - r, r, hub=(120, 120, 125))
    mid = (back + front) / 2
    p.polygon(
        [(back, y0 + h * 0.55), (mid - (front - back) * 0.15, y0 + h * 0.25),
         (mid + (front - back) * 0.3, y0 + h * 0.3), (front, y0 + h - r)],
        body,
    )
    lw = max(2, round(h * 0.07))
    p.line([(front, y0 + h - r), (front - (front - back) * 0.12, y0)], (170, 170, 175), lw)
    p.rect((min(back, mid), y0 + h * 0.22, max(back, mid), y0 + h * 0.3), (20, 20, 20))


def _bike_frame(p, x0, y0, w, h, color, lw):
    r = min(h * 0.36, w * 0.24)
    cy = y0 + h - r
    bx, fx = x0 + r, x0 + w - r
    p.ellipse((bx - r, cy - r, bx + r, cy + r), outline=(15, 15, 15), width=lw)
    p.ellipse((fx - r, cy - r, fx + r, cy + r), outline=(15, 15, 15), width=lw)
    seat = (bx + (fx - bx) * 0.35, y0 + h * 0.18)
    bar = (bx + (fx - bx) * 0.8, y0 + h * 0.1)
    crank = (bx + (fx - bx) * 0.48, cy)
    p.line([(bx, cy), seat, crank, (bx, cy)], color, lw)
    p.line([seat, (bar[0] - (fx - bx) * 0.05, seat[1]), crank], color, lw)
    p.line([(fx, cy), bar], color, lw)
    return seat, bar


def _draw_bike(p, x0, y0, w, h, rng, facing):
    lw = max(2, round(h * 0.08))
    _bike_frame(p, x0, y0, w, h, _jitter(rng, (40, 200, 150), 12), lw)


def _person_shape(p, cx, y0, h, shirt, head=(232, 190, 160), legs=True):
    head_r = h * 0.09
    p.ellipse((cx - head_r, y0, cx + head_r, y0 + 2 * head_r), fill=head)
    torso_w = h * 0.2
    top = y0 + 2 * head_r + 1
    p.rect((cx - torso_w / 2, top, cx + torso_w / 2, top + h * 0.36), shirt)
    arm = max(2, round(h * 0.055))
    p.line([(cx - torso_w / 2, top + 2), (cx - torso_w * 0.75, top + h * 0.3)], shirt, arm)
    p.line([(cx + torso_w / 2, top + 2), (cx + torso_w * 0.75, top + h * 0.3)], shirt, arm)
    if legs:
        leg = max(2, round(h * 0.07))
        hip = top + h * 0.36
        p.line([(cx - torso_w * 0.25, hip), (cx - torso_w * 0.35, y0 + h)], (35, 45, 95), leg)
        p.line([(cx + torso_w * 0.25, hip), (cx + torso_w * 0.35, y0 + h)], (35, 45, 95), leg)


def _draw_person(p, x0, y0, w, h, rng, facing):
    _person_shape(p, x0 + w / 2, y0, h, _jitter(rng, (236, 118, 30), 12))


def _draw_rider(p, x0, y0, w, h, rng, facing):
    frame_h = h * 0.42
    lw = max(2, round(frame_h * 0.09))
    seat, bar = _bike_frame(p, x0, y0 + h - frame_h, w, frame_h, (120, 120, 128), lw)
    body_h = h * 0.62
    cx = seat[0] + w * 0.06
    top = y0
    shirt = _jitter(rng, (150, 55, 205), 12)
    head_r = body_h * 0.13
    p.ellipse((cx - head_r, top, cx + head_r, top + 2 * head_r), fill=(245, 245, 245))
    torso_top = top + 2 * head_r + 1
    torso_w = body_h * 0.26
    p.polygon(
        [(cx - torso_w / 2, torso_top), (cx + torso_w / 2, torso_top),
         (seat[0] + torso_w / 2, seat[1]), (seat[0] - torso_w / 2, seat[1])],
        shirt,
    )
    arm = max(2, round(body_h * 0.07))
    p.line([(cx, torso_top + 2), bar], shirt, arm)
    p.line([seat, (seat[0] + (bar[0] - seat[0]) * 0.35, y0 + h - lw)], (35, 45, 95), arm + 1)


_DRAW: dict[str, Callable] = {
    "bus": _draw_bus,
    "bike": _draw_bike,
    "car": _draw_car,
    "motor": _draw_motor,
    "person": _draw_person,
    "rider": _draw_rider,
    "truck": _draw_truck,
}


def _vertical_gradient(top, bottom, height: int, width: int) -> np.ndarray:
    t = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    col = np.asarray(top, np.float32) * (1 - t) + np.asarray(bottom, np.float32) * t
    return np.broadcast_to(col, (height, width, 3))


def _background(size, horizon, vx, road_half, rng, domain, label_draw=None):
    """Sky, ground, road and lane marks, as an RGB image plus its depth layer (0 far, 255 near).

    `label_draw` (optional) receives the same shapes in Cityscapes train ids (`SEG_TRAIN_IDS`).
    """
    arr = np.empty((size, size, 3), np.float32)
    top, bottom = SKY[domain]
    sky_top, sky_bottom = _jitter(rng, top, 6), _jitter(rng, bottom, 6)
    arr[:horizon] = _vertical_gradient(sky_top, sky_bottom, horizon, size)
    arr[horizon:] = _vertical_gradient((120, 140, 95), (95, 140, 70), size - horizon, size)
    image = Image.fromarray(arr.astype(np.uint8))
    rows = np.clip((np.arange(size) - horizon) / (size - horizon), 0, 1) * 255
    depth = Image.fromarray(np.repeat(rows[:, None], size, axis=1).astype(np.uint8))
    draw, depth_draw = ImageDraw.Draw(image), ImageDraw.Draw(depth)
    skyline = horizon
    x = -rng.integers(0, 20)
    while x < size:
        bw = int(rng.integers(size // 14, size // 6))
        bh = int(rng.integers(size // 30, size // 7))
        shade = int(rng.integers(90, 150))
        cool = rng.random() < 0.5
        color = (shade, shade - 4, shade + 6) if cool else (shade + 20, shade, shade - 10)
        draw.rectangle((x, skyline - bh, x + bw, skyline), fill=color)
        depth_draw.rectangle((x, skyline - bh, x + bw, skyline), fill=2)
        if label_draw is not None:
            label_draw.rectangle((x, skyline - bh, x + bw, skyline), fill=SEG_TRAIN_IDS["building"])
        x += bw + int(rng.integers(0, size // 10))
    sidewalk = (168, 164, 156)
    road_pts = [(vx - 2, horizon), (vx + 2, horizon), (vx + road_half * 1.45, size),
                (vx - road_half * 1.45, size)]
    draw.polygon(road_pts, fill=sidewalk)
    if label_draw is not None:
        label_draw.polygon(road_pts, fill=SEG_TRAIN_IDS["sidewalk"])
    road_pts = [(vx - 1, horizon), (vx + 1, horizon), (vx + road_half, size),
                (vx - road_half, size)]
    draw.polygon(road_pts, fill=_jitter(rng, (92, 92, 98), 8))
    if label_draw is not None:  # lane marks drawn next lie inside the road: road, as in Cityscapes
        label_draw.polygon(road_pts, fill=SEG_TRAIN_IDS["road"])
    for side in (-1, 1):
        draw.line([(vx, horizon), (vx + side * road_half * 0.97, size)], fill=(225, 225, 225),
                  width=max(1, size // 160))
    # dashed centre line: dashes grow with proximity
    depth_pos = 0.05
    while depth_pos < 1.0:
        nxt = min(1.0, depth_pos + 0.06 * (0.3 + depth_pos))
        y0, y1 = horizon + depth_pos * (size - horizon), horizon + nxt * (size - horizon)
        draw.line([(vx, y0), (vx, y1)], fill=(235, 230, 200),
                  width=max(1, round(size / 120 * nxt)))
        depth_pos = nxt + 0.05 * (0.3 + nxt)
    for _ in range(int(rng.integers(1, 4))):
        side = 1 if rng.random() < 0.5 else -1
        d = rng.uniform(0.05, 0.35)
        tx = vx + side * (road_half * 1.45 * d + size * rng.uniform(0.05, 0.2))
        ty = horizon + d * (size - horizon)
        th = size * 0.25 * (d + 0.2)
        draw.line([(tx, ty), (tx, ty - th * 0.5)], fill=(80, 60, 40), width=max(2, round(th / 12)))
        r = th * 0.3
        draw.ellipse((tx - r, ty - th * 0.5 - 1.6 * r, tx + r, ty - th * 0.5 + 0.2 * r),
                     fill=_jitter(rng, (45, 100, 50), 12))
        if label_draw is not None:  # trunk and crown: vegetation, as in Cityscapes
            label_draw.line([(tx, ty), (tx, ty - th * 0.5)], fill=SEG_TRAIN_IDS["vegetation"],
                            width=max(2, round(th / 12)))
            label_draw.ellipse((tx - r, ty - th * 0.5 - 1.6 * r, tx + r, ty - th * 0.5 + 0.2 * r),
                               fill=SEG_TRAIN_IDS["vegetation"])
        depth_draw.rectangle((tx - r, ty - th, tx + r, ty), fill=int(d * 255))
    return image, depth


def _occluded_fraction(box, nearer) -> float:
    x0, y0, x1, y1 = box
    area = (x1 - x0 + 1) * (y1 - y0 + 1)
    mask = np.zeros((y1 - y0 + 1, x1 - x0 + 1), bool)
    for a0, b0, a1, b1 in nearer:
        ia0, ib0, ia1, ib1 = max(a0, x0), max(b0, y0), min(a1, x1), min(b1, y1)
        if ia1 >= ia0 and ib1 >= ib0:
            mask[ib0 - y0 : ib1 - y0 + 1, ia0 - x0 : ia1 - x0 + 1] = True
    return float(mask.sum()) / area


def _layout(rng, size, horizon, vx, road_half, first_class):
    """Choose classes, depths and positions; reject placements hiding most of another object."""
    names = list(CLASS_FREQUENCY)
    weights = np.array([CLASS_FREQUENCY[n] for n in names], float)
    count = int(rng.integers(1, 7))
    others = rng.choice(names, size=count - 1, p=weights / weights.sum())
    chosen = [first_class] + [str(n) for n in others]
    placed: list[tuple[str, float, float, float, float, int]] = []
    for name in chosen:
        bw, bh = CLASS_SIZES[name]
        for _ in range(12):
            depth = rng.uniform(MIN_DEPTH, 1.0)
            w, h = bw * size * depth, bh * size * depth
            bottom = horizon + depth * (size - horizon) - 1
            half = road_half * depth
            if name in VEHICLES:
                cx = vx + rng.uniform(-0.75, 0.75) * half
            else:
                cx = vx + (1 if rng.random() < 0.5 else -1) * half * rng.uniform(0.55, 1.6)
            if rng.random() < 0.15:  # a few objects are cut by the frame (truncated)
                x0 = min(max(cx - w / 2, -0.35 * w), size - 0.65 * w)
            else:
                x0 = min(max(cx - w / 2, 1.0), size - 2.0 - w)
            box = (x0, bottom - h, x0 + w, bottom)
            if all(_overlap(box, q[2:]) < 0.55 for q in _boxes(placed)):
                placed.append((name, depth, x0, bottom - h, w, h))
                break
    return placed


def _boxes(placed):
    return [(n, d, x0, y0, x0 + w, y0 + h) for n, d, x0, y0, w, h in placed]


def _overlap(a, b) -> float:
    """Intersection over the smaller box: how much of one object the other may hide."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    return iw * ih / min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))


def _glow(arr, cx, cy, radius, color, strength) -> None:
    size = arr.shape[0]
    r = int(radius * 3) + 1
    x0, x1 = max(0, int(cx) - r), min(size, int(cx) + r + 1)
    y0, y1 = max(0, int(cy) - r), min(size, int(cy) + r + 1)
    if x0 >= x1 or y0 >= y1:
        return
    yy, xx = np.mgrid[y0:y1, x0:x1]
    g = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * radius**2)) * strength
    arr[y0:y1, x0:x1] += g[..., None] * np.asarray(color, np.float32)


def _rain(size, rng, count, angle, length) -> np.ndarray:
    """A layer of thin slanted streaks (opacity 0..1) of shape (size, size, 1)."""
    layer = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(layer)
    dx, dy = math.sin(angle), math.cos(angle)
    for _ in range(count):
        x, y = rng.uniform(-20, size), rng.uniform(-20, size)
        ln = length * rng.uniform(0.6, 1.4)
        draw.line([(x, y), (x + ln * dx, y + ln * dy)], fill=int(rng.integers(128, 256)), width=1)
    return np.asarray(layer, np.float32)[..., None] / 255.0


class Textures(NamedTuple):
    """Per-domain banks each image cuts a random window from: sensor noise and rain streaks."""

    noise: np.ndarray  # (2 * size, 2 * size, 4) standard normal: luminance + RGB
    rain: np.ndarray  # (2 * size, 2 * size, 1) streak opacity


@lru_cache(maxsize=2)
def domain_textures(seed: int, domain_index: int, size: int) -> Textures:
    """The noise and rain banks of one (seed, domain): drawing them per image costs more than the
    scene itself, and cutting windows from a bank keeps every image a pure function of
    (seed, domain, index)."""
    rng = np.random.default_rng([seed, domain_index, 2**31 - 1])
    noise = rng.standard_normal((2 * size, 2 * size, 4), dtype=np.float32)
    rain = _rain(2 * size, rng, int(3.2 * size), rng.uniform(-0.3, 0.3), size * 0.06)
    return Textures(noise, rain)


def _window(bank: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    oy, ox = (int(v) for v in rng.integers(0, bank.shape[0] - size + 1, 2))
    return bank[oy : oy + size, ox : ox + size]


def _apply_domain(image, depth, domain, rng, objects, horizon, size, textures):
    arr = np.asarray(image, np.float32).copy()
    night = domain.startswith("night")
    if night:
        arr = arr * rng.uniform(0.2, 0.3) + 6.0
        lamps = [(x, horizon - size * rng.uniform(0.05, 0.15)) for x in
                 rng.uniform(0, size, int(rng.integers(2, 6)))]
        for x, y in lamps:
            _glow(arr, x, y, size * rng.uniform(0.012, 0.025), (255, 220, 150), 0.9)
        for obj in objects:
            if obj.name in VEHICLES:
                x0, y0, x1, y1 = obj.box
                y = y0 + (y1 - y0) * 0.6
                for x in (x0 + (x1 - x0) * 0.08, x1 - (x1 - x0) * 0.08):
                    color = (255, 240, 200) if rng.random() < 0.5 else (255, 60, 40)
                    _glow(arr, x, y, max(1.5, (y1 - y0) * 0.06), color, 0.8)
    if domain == "dusk_rainy":
        arr = arr * np.array([1.08, 0.86, 0.66], np.float32) * rng.uniform(0.6, 0.75)
    if domain.endswith("rainy"):
        streaks = _window(textures.rain, rng, size) * rng.uniform(0.35, 0.55)
        level = 120.0 if night else 215.0
        arr += (level - arr) * streaks
    if domain == "daytime_foggy":
        dist = 1.0 - np.asarray(depth, np.float32)[..., None] / 255.0
        density = rng.uniform(0.6, 0.8)
        fog = np.clip(0.08 + density * dist**0.8, 0.0, 0.92)
        arr = arr * (1 - fog) + np.asarray(_jitter(rng, (205, 207, 210), 4), np.float32) * fog
    grain = _window(textures.noise, rng, size)
    if night:  # sensor noise: strong luminance grain plus some chroma noise
        arr += grain[..., :1] * 6.0 + grain[..., 1:] * 2.5
    else:
        arr += grain[..., 1:] * 2.0
    out = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    if domain.endswith("rainy"):
        out = out.filter(ImageFilter.BoxBlur(radius=rng.uniform(0.6, 1.0)))
    return out


def render_scene(
    rng: np.random.Generator,
    domain: str,
    size: int = 320,
    first_class: str | None = None,
    textures: Textures | None = None,
) -> tuple[Image.Image, list[SceneObject]]:
    """Draw one street scene of `domain`; returns the RGB image and its objects (tight boxes).

    `textures` are the banks sensor noise and rain are cut from (default: drawn from `rng`).
    """
    image, objects, _ = _render(rng, domain, size, first_class, textures, with_labels=False)
    return image, objects


def render_scene_with_labels(
    rng: np.random.Generator,
    domain: str,
    size: int = 320,
    first_class: str | None = None,
    textures: Textures | None = None,
) -> tuple[Image.Image, list[SceneObject], Image.Image]:
    """`render_scene` plus its per-pixel label map ("L" image of Cityscapes train ids).

    The image and objects are exactly those `render_scene` draws from the same generator state:
    the label layer repeats the drawing calls and consumes no random numbers. Classes follow
    `SEG_TRAIN_IDS` (weather effects such as glare, rain and fog do not change labels).
    """
    image, objects, label = _render(rng, domain, size, first_class, textures, with_labels=True)
    return image, objects, label


def _render(rng, domain, size, first_class, textures, with_labels):
    if domain not in SKY:
        raise ValueError(f"unknown synthetic domain {domain!r}; expected one of {list(SKY)}")
    horizon = int(size * rng.uniform(0.36, 0.44))
    vx = size * rng.uniform(0.4, 0.6)
    road_half = size * rng.uniform(0.45, 0.6)
    label = label_draw = None
    if with_labels:
        label = Image.new("L", (size, size), SEG_TRAIN_IDS["terrain"])
        label_draw = ImageDraw.Draw(label)
        label_draw.rectangle((0, 0, size - 1, horizon - 1), fill=SEG_TRAIN_IDS["sky"])
    image, depth = _background(size, horizon, vx, road_half, rng, domain, label_draw)
    painter = _Painter(ImageDraw.Draw(image), ImageDraw.Draw(depth), size, label_draw=label_draw)
    first = first_class or str(rng.choice(DWD_CLASSES))
    layout = sorted(_layout(rng, size, horizon, vx, road_half, first), key=lambda o: o[1])
    objects: list[SceneObject] = []
    for name, d, x0, y0, w, h in layout:
        painter.start(d, SEG_TRAIN_IDS[name])
        facing = 1 if rng.random() < 0.5 else -1
        _DRAW[name](painter, x0, y0, w, h, rng, facing)
        ex0, ey0, ex1, ey1 = painter.extent
        box = (max(0, math.floor(ex0)), max(0, math.floor(ey0)),
               min(size - 1, math.ceil(ex1)), min(size - 1, math.ceil(ey1)))
        truncated = int(ex0 < 0 or ey0 < 0 or ex1 > size - 1 or ey1 > size - 1)
        objects.append(SceneObject(name, box, d, truncated=truncated))
    for i, obj in enumerate(objects):
        if _occluded_fraction(obj.box, [o.box for o in objects[i + 1 :]]) > 0.5:
            obj.difficult = 1
    if textures is None:
        textures = Textures(rng.standard_normal((size, size, 4), dtype=np.float32),
                            _rain(size, rng, int(0.8 * size), rng.uniform(-0.3, 0.3), size * 0.06))
    image = _apply_domain(image, depth, domain, rng, objects, horizon, size, textures)
    return image, objects, label


def voc_xml(image_id: str, size: int, objects: list[SceneObject]) -> str:
    """A VOC XML with what Detectron2's evaluator re-parses: pose, truncated, difficult, int box."""
    parts = [
        "<annotation>",
        "  <folder>VOC2007</folder>",
        f"  <filename>{escape(image_id)}.jpg</filename>",
        f"  <size><width>{size}</width><height>{size}</height><depth>3</depth></size>",
        "  <segmented>0</segmented>",
    ]
    for o in objects:
        x0, y0, x1, y1 = o.box
        parts += [
            "  <object>",
            f"    <name>{o.name}</name>",
            "    <pose>Unspecified</pose>",
            f"    <truncated>{o.truncated}</truncated>",
            f"    <difficult>{o.difficult}</difficult>",
            f"    <bndbox><xmin>{x0 + 1}</xmin><ymin>{y0 + 1}</ymin>"
            f"<xmax>{x1 + 1}</xmax><ymax>{y1 + 1}</ymax></bndbox>",
            "  </object>",
        ]
    parts.append("</annotation>")
    return "\n".join(parts) + "\n"


def _write_domain(out_dir: str, domain: str, domain_index: int, count: int, size: int,
                  seed: int) -> dict[str, int]:
    voc = os.path.join(out_dir, domain, "VOC2007")
    for sub in ("Annotations", "JPEGImages", os.path.join("ImageSets", "Main")):
        os.makedirs(os.path.join(voc, sub), exist_ok=True)
    counts = dict.fromkeys(DWD_CLASSES, 0)
    ids = [f"{domain}_{i:05d}" for i in range(count)]
    for i, image_id in enumerate(ids):
        rng = np.random.default_rng([seed, domain_index, i])
        image, objects = render_scene(rng, domain, size, DWD_CLASSES[i % 7],
                                      domain_textures(seed, domain_index, size))
        image.save(os.path.join(voc, "JPEGImages", image_id + ".jpg"), quality=JPEG_QUALITY)
        with open(os.path.join(voc, "Annotations", image_id + ".xml"), "w") as f:
            f.write(voc_xml(image_id, size, objects))
        for o in objects:
            counts[o.name] += 1
    splits = _splits(ids, domain, domain_index, seed)
    for split, split_ids in splits.items():
        with open(os.path.join(voc, "ImageSets", "Main", split + ".txt"), "w") as f:
            f.write("".join(i + "\n" for i in split_ids))
    return counts


def _splits(ids: list[str], domain: str, domain_index: int, seed: int) -> dict[str, list[str]]:
    """DWD's splits: the source 70/30 into train/test, a target domain whole (under "train")."""
    if domain != DWD_SOURCE_DOMAIN:
        return {"train": ids}
    count = len(ids)
    order = np.random.default_rng([seed, domain_index, 10**9]).permutation(count)
    n_train = max(1, min(count - 1, round(count * SOURCE_TRAIN_FRACTION)))
    return {"train": sorted(ids[j] for j in order[:n_train]),
            "test": sorted(ids[j] for j in order[n_train:])}


def _write_domain_timed(args) -> tuple[dict[str, int], float]:
    start = time.perf_counter()
    return _write_domain(*args), time.perf_counter() - start


def generate_synthetic_dwd(
    out_dir: str,
    images_per_domain: int = 200,
    image_size: int = 320,
    seed: int = 0,
    progress: bool = True,
    workers: int | None = None,
) -> dict[str, dict[str, int]]:
    """Write the synthetic weather data set under `out_dir` in the Diverse Weather layout.

    `<out_dir>/<domain>/VOC2007/{Annotations,JPEGImages,ImageSets/Main}` for the five DWD
    domains; the source `daytime_clear` is split 70/30 into `train.txt`/`test.txt`, each target
    lists all its images in `train.txt`. Images are `image_size` squared JPEGs. Domains are
    written by `workers` forked processes (default: one per CPU core, at most 5; 1 = in this
    process); the bytes do not depend on it. Returns the object count per class for each domain.
    Register the result with `register_dwd(out_dir)`.
    """
    summary = {}
    results = _run_domains(_write_domain_timed, out_dir, images_per_domain, image_size, seed,
                           workers)
    for domain, (counts, seconds) in results:
        summary[domain] = counts
        if progress:
            print(f"[synthetic DWD] {domain}: {images_per_domain} images, "
                  f"{sum(counts.values())} objects, {seconds:.1f} s", flush=True)
    return summary


def _run_domains(write_timed, out_dir, images_per_domain: int, image_size: int, seed: int,
                 workers: int | None) -> Iterator[tuple[str, Any]]:
    """Run `write_timed` once per DWD domain, in forked workers when allowed.

    Yields (domain, result) as each domain finishes, so callers can print progress; arguments
    are checked before anything is written.
    """
    if images_per_domain < 2:
        raise ValueError(f"images_per_domain must be >= 2 (got {images_per_domain})")
    if image_size < 64:
        raise ValueError(f"image_size must be >= 64 pixels (got {image_size})")
    out_dir = os.fspath(out_dir)
    jobs = [
        (out_dir, domain, k, images_per_domain, image_size, seed)
        for k, domain in enumerate(DWD_DOMAINS)
    ]
    if workers is None:
        workers = min(len(jobs), os.cpu_count() or 1)
    if "fork" not in mp.get_all_start_methods():
        workers = 1  # spawned workers would re-import Detectron2: slower than writing in-process
    if workers > 1:
        with mp.get_context("fork").Pool(workers) as pool:
            yield from zip(DWD_DOMAINS, pool.imap(write_timed, jobs))
    else:
        yield from zip(DWD_DOMAINS, map(write_timed, jobs))


# ---- segmentation variant ----------------------------------------------------------------------

def _write_semseg_domain(out_dir: str, domain: str, domain_index: int, count: int, size: int,
                         seed: int) -> np.ndarray:
    ids = [f"{domain}_{i:05d}" for i in range(count)]
    splits = _splits(ids, domain, domain_index, seed)
    split_of = {}
    for split, split_ids in splits.items():
        # the targets' whole-domain split is called "test" here (nothing trains on it)
        folder = split if domain == DWD_SOURCE_DOMAIN else "test"
        split_of.update(dict.fromkeys(split_ids, folder))
    pixels = np.zeros(256, np.int64)
    for i, image_id in enumerate(ids):
        rng = np.random.default_rng([seed, domain_index, i])
        image, _, label = render_scene_with_labels(rng, domain, size, DWD_CLASSES[i % 7],
                                                   domain_textures(seed, domain_index, size))
        fields = dict(domain=domain, split=split_of[image_id], id=image_id)
        image_path = os.path.join(out_dir, SYNTHETIC_SEG_LAYOUT["image"].format(**fields))
        label_path = os.path.join(out_dir, SYNTHETIC_SEG_LAYOUT["label"].format(**fields))
        for path in (image_path, label_path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
        image.save(image_path)
        label.save(label_path)
        pixels += np.bincount(np.asarray(label).ravel(), minlength=256)
    return pixels


def _write_semseg_domain_timed(args) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    return _write_semseg_domain(*args), time.perf_counter() - start


def generate_synthetic_semseg(
    out_dir: str,
    images_per_domain: int = 200,
    image_size: int = 320,
    seed: int = 0,
    progress: bool = True,
    workers: int | None = None,
) -> dict[str, dict[str, int]]:
    """Write the segmentation variant of the synthetic weather data under `out_dir`.

    The same scenes as `generate_synthetic_dwd` with the same arguments (same images before JPEG
    compression, same source split), as PNG images with per-pixel Cityscapes train-id labels
    (`SEG_TRAIN_IDS`), one Cityscapes-like tree per domain (`SYNTHETIC_SEG_LAYOUT`):
    `<domain>/leftImg8bit/<split>/<domain>/<id>_leftImg8bit.png` and
    `<domain>/gtFine/<split>/<domain>/<id>_gtFine_labelTrainIds.png`, split `train`/`test` for
    the source and `test` (all images) for each target. Returns the pixel count of every class
    name per domain. Register the result with `register_synthetic_semseg(out_dir)`.
    """
    summary = {}
    results = _run_domains(_write_semseg_domain_timed, out_dir, images_per_domain, image_size,
                           seed, workers)
    for domain, (pixels, seconds) in results:
        summary[domain] = {
            name: int(pixels[i]) for i, name in enumerate(CITYSCAPES_STUFF_CLASSES) if pixels[i]
        }
        if progress:
            print(f"[synthetic seg] {domain}: {images_per_domain} images, "
                  f"{len(summary[domain])} classes, {seconds:.1f} s", flush=True)
    return summary
