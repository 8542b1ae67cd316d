"""The appearance of each domain: night, dusk rain, night rain and distance-dependent fog, applied
on top of the clear-day rendering so that the domains differ only in appearance.
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .painter import jitter
from .scene_spec import VEHICLES


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


def rain_streaks(size, rng, count, angle, length) -> np.ndarray:
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
    rain = rain_streaks(2 * size, rng, int(3.2 * size), rng.uniform(-0.3, 0.3), size * 0.06)
    return Textures(noise, rain)


def _window(bank: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    oy, ox = (int(v) for v in rng.integers(0, bank.shape[0] - size + 1, 2))
    return bank[oy : oy + size, ox : ox + size]


def apply_weather(image, depth, domain, rng, objects, horizon, size, textures):
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
        arr = arr * (1 - fog) + np.asarray(jitter(rng, (205, 207, 210), 4), np.float32) * fog
    grain = _window(textures.noise, rng, size)
    if night:  # sensor noise: strong luminance grain plus some chroma noise
        arr += grain[..., :1] * 6.0 + grain[..., 1:] * 2.5
    else:
        arr += grain[..., 1:] * 2.0
    out = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    if domain.endswith("rainy"):
        out = out.filter(ImageFilter.BoxBlur(radius=rng.uniform(0.6, 1.0)))
    return out
