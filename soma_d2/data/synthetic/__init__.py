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

Modules: `scene_spec` (classes, sizes, colours, label ids), `painter` (drawing primitives),
`objects` (the seven object painters), `layout` (background and placement), `weather` (domain
appearance), `render` (one scene), `voc_writer` / `semseg_writer` (the two data sets on disk),
`runner` (the per-domain process pool).
"""
from .render import render_scene, render_scene_with_labels
from .scene_spec import CLASS_SIZES, SEG_TRAIN_IDS, SceneObject
from .semseg_writer import generate_synthetic_semseg
from .voc_writer import generate_synthetic_dwd, voc_xml
from .weather import Textures, domain_textures

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
