"""One scene from its own random generator: background, objects, weather, and optionally labels.
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from ..dwd import DWD_CLASSES
from .layout import draw_background, occluded_fraction, place_objects
from .objects import OBJECT_PAINTERS
from .painter import Painter
from .scene_spec import SEG_TRAIN_IDS, SKY, SceneObject
from .weather import Textures, apply_weather, rain_streaks


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
    image, depth = draw_background(size, horizon, vx, road_half, rng, domain, label_draw)
    painter = Painter(ImageDraw.Draw(image), ImageDraw.Draw(depth), size, label_draw=label_draw)
    first = first_class or str(rng.choice(DWD_CLASSES))
    layout = sorted(place_objects(rng, size, horizon, vx, road_half, first), key=lambda o: o[1])
    objects: list[SceneObject] = []
    for name, d, x0, y0, w, h in layout:
        painter.start(d, SEG_TRAIN_IDS[name])
        facing = 1 if rng.random() < 0.5 else -1
        OBJECT_PAINTERS[name](painter, x0, y0, w, h, rng, facing)
        ex0, ey0, ex1, ey1 = painter.extent
        box = (max(0, math.floor(ex0)), max(0, math.floor(ey0)),
               min(size - 1, math.ceil(ex1)), min(size - 1, math.ceil(ey1)))
        truncated = int(ex0 < 0 or ey0 < 0 or ex1 > size - 1 or ey1 > size - 1)
        objects.append(SceneObject(name, box, d, truncated=truncated))
    for i, obj in enumerate(objects):
        if occluded_fraction(obj.box, [o.box for o in objects[i + 1 :]]) > 0.5:
            obj.difficult = 1
    if textures is None:
        textures = Textures(rng.standard_normal((size, size, 4), dtype=np.float32),
                            rain_streaks(size, rng, int(0.8 * size), rng.uniform(-0.3, 0.3), size * 0.06))
    image = apply_weather(image, depth, domain, rng, objects, horizon, size, textures)
    return image, objects, label
