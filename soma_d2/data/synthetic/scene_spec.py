"""What a synthetic scene may hold: classes, their sizes and frequencies, sky colours per domain,
the label ids of the segmentation variant, and the record of one drawn object.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..seg_labels import CITYSCAPES_STUFF_CLASSES

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
