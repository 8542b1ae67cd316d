"""The seven object painters (bus, bike, car, motor, person, rider, truck): a consistent shape, size
and colour per class, so that a tiny detector can learn them.
"""
from __future__ import annotations

from collections.abc import Callable

from .painter import jitter, wheel


def _wheels(p, x0, y0, w, h, radius: float, at) -> None:
    """Wheels of radius `radius * h` standing on the box's bottom edge, centred at the fractions
    `at` of its width: the running gear every four-wheeled vehicle draws the same way."""
    r = h * radius
    for fx in at:
        wheel(p, x0 + w * fx, y0 + h - r, r)


def _draw_bus(p, x0, y0, w, h, rng, facing):
    body = jitter(rng, (238, 192, 36), 10)
    p.rect((x0, y0, x0 + w, y0 + h * 0.86), body)
    n = 5
    gap = w * 0.035
    win_w = (w - gap * (n + 1)) / n
    for i in range(n):
        wx = x0 + gap + i * (win_w + gap)
        p.rect((wx, y0 + h * 0.12, wx + win_w, y0 + h * 0.42), (40, 52, 78))
    p.rect((x0, y0 + h * 0.58, x0 + w, y0 + h * 0.64), (60, 60, 60))
    _wheels(p, x0, y0, w, h, 0.14, (0.2, 0.8))


def _draw_truck(p, x0, y0, w, h, rng, facing):
    cab_w = w * 0.26
    cargo = jitter(rng, (212, 214, 220), 8)
    cab = jitter(rng, (38, 112, 62), 10)
    if facing > 0:
        box_x, cab_x = x0, x0 + w - cab_w
    else:
        box_x, cab_x = x0 + cab_w, x0
    p.rect((box_x, y0, box_x + w - cab_w - 2, y0 + h * 0.82), cargo)
    p.rect((cab_x, y0 + h * 0.32, cab_x + cab_w, y0 + h * 0.86), cab)
    win_x = cab_x + cab_w * (0.45 if facing > 0 else 0.1)
    p.rect((win_x, y0 + h * 0.38, win_x + cab_w * 0.45, y0 + h * 0.56), (150, 190, 215))
    p.rect((x0, y0 + h * 0.8, x0 + w, y0 + h * 0.86), (50, 50, 50))
    at = (0.14, 0.34, 0.86 if facing > 0 else 0.12)
    _wheels(p, x0, y0, w, h, 0.14, [fx if facing > 0 else 1 - fx for fx in at])


def _draw_car(p, x0, y0, w, h, rng, facing):
    body = jitter(rng, (205, 28, 30) if rng.random() < 0.5 else (30, 62, 205), 15)
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
    _wheels(p, x0, y0, w, h, 0.2, (0.2, 0.8))


def _draw_motor(p, x0, y0, w, h, rng, facing):
    r = h * 0.3
    body = jitter(rng, (36, 36, 42), 6)
    back, front = (x0 + r, x0 + w - r) if facing > 0 else (x0 + w - r, x0 + r)
    wheel(p, back, y0 + h - r, r, hub=(120, 120, 125))
    wheel(p, front, y0 + h - r, r, hub=(120, 120, 125))
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
    _bike_frame(p, x0, y0, w, h, jitter(rng, (40, 200, 150), 12), lw)


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
    _person_shape(p, x0 + w / 2, y0, h, jitter(rng, (236, 118, 30), 12))


def _draw_rider(p, x0, y0, w, h, rng, facing):
    frame_h = h * 0.42
    lw = max(2, round(frame_h * 0.09))
    seat, bar = _bike_frame(p, x0, y0 + h - frame_h, w, frame_h, (120, 120, 128), lw)
    body_h = h * 0.62
    cx = seat[0] + w * 0.06
    top = y0
    shirt = jitter(rng, (150, 55, 205), 12)
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


OBJECT_PAINTERS: dict[str, Callable] = {
    "bus": _draw_bus,
    "bike": _draw_bike,
    "car": _draw_car,
    "motor": _draw_motor,
    "person": _draw_person,
    "rider": _draw_rider,
    "truck": _draw_truck,
}
