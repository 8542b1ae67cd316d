"""Drawing primitives that paint the image, its depth layer and (optionally) its label layer at
once, so that boxes, occlusion and segmentation labels all come from the same strokes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import ImageDraw


@dataclass
class Painter:
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


def jitter(rng: np.random.Generator, color, amount: int = 12) -> tuple[int, int, int]:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in color)


def wheel(p: Painter, cx: float, cy: float, r: float, hub=(150, 150, 150)) -> None:
    p.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(18, 18, 18))
    p.ellipse((cx - r * 0.45, cy - r * 0.45, cx + r * 0.45, cy + r * 0.45), fill=hub)
