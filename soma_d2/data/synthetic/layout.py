"""Scene geometry: sky, ground, road, buildings and trees, and where the objects stand (perspective,
far-to-near order, placements that would hide most of another object rejected).
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from .painter import jitter
from .scene_spec import CLASS_FREQUENCY, CLASS_SIZES, MIN_DEPTH, SEG_TRAIN_IDS, SKY, VEHICLES


def _vertical_gradient(top, bottom, height: int, width: int) -> np.ndarray:
    t = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    col = np.asarray(top, np.float32) * (1 - t) + np.asarray(bottom, np.float32) * t
    return np.broadcast_to(col, (height, width, 3))


def draw_background(size, horizon, vx, road_half, rng, domain, label_draw=None):
    """Sky, ground, road and lane marks, as an RGB image plus its depth layer (0 far, 255 near).

    `label_draw` (optional) receives the same shapes in Cityscapes train ids (`SEG_TRAIN_IDS`).
    """
    arr = np.empty((size, size, 3), np.float32)
    top, bottom = SKY[domain]
    sky_top, sky_bottom = jitter(rng, top, 6), jitter(rng, bottom, 6)
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
    draw.polygon(road_pts, fill=jitter(rng, (92, 92, 98), 8))
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
                     fill=jitter(rng, (45, 100, 50), 12))
        if label_draw is not None:  # trunk and crown: vegetation, as in Cityscapes
            label_draw.line([(tx, ty), (tx, ty - th * 0.5)], fill=SEG_TRAIN_IDS["vegetation"],
                            width=max(2, round(th / 12)))
            label_draw.ellipse((tx - r, ty - th * 0.5 - 1.6 * r, tx + r, ty - th * 0.5 + 0.2 * r),
                               fill=SEG_TRAIN_IDS["vegetation"])
        depth_draw.rectangle((tx - r, ty - th, tx + r, ty), fill=int(d * 255))
    return image, depth


def occluded_fraction(box, nearer) -> float:
    x0, y0, x1, y1 = box
    area = (x1 - x0 + 1) * (y1 - y0 + 1)
    mask = np.zeros((y1 - y0 + 1, x1 - x0 + 1), bool)
    for a0, b0, a1, b1 in nearer:
        ia0, ib0, ia1, ib1 = max(a0, x0), max(b0, y0), min(a1, x1), min(b1, y1)
        if ia1 >= ia0 and ib1 >= ib0:
            mask[ib0 - y0 : ib1 - y0 + 1, ia0 - x0 : ia1 - x0 + 1] = True
    return float(mask.sum()) / area


def place_objects(rng, size, horizon, vx, road_half, first_class):
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
