"""Pictures of predictions per domain: a grid of a few images with Detectron2's `Visualizer`.

A DG result is easier to trust when one can see what the detector does on each unseen domain;
after evaluation the trainer saves one PNG per test domain (`save_prediction_grids`), drawing the
boxes above a score threshold with the class names from the data set's metadata. Detectron2's
`Visualizer` imports OpenCV, which Detectron2 does not declare; without it the boxes and labels
are drawn with PIL in Detectron2's class colours instead (logged once), so a missing optional
package never costs the results of a finished evaluation.
"""
from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch
from detectron2.data import MetadataCatalog
from detectron2.data.detection_utils import read_image
from detectron2.structures import Instances
from detectron2.utils.colormap import colormap
from PIL import Image, ImageDraw

from ..utils import atomic_write

__all__ = ["collect_predictions", "save_prediction_grid", "save_prediction_grids"]

logger = logging.getLogger(__name__)


def collect_predictions(
    model: torch.nn.Module, data_loader: Iterable, num_images: int = 4
) -> list[tuple[dict, Instances]]:
    """Run `model` on the first `num_images` inputs of a test loader; (input, Instances) pairs.

    The input dicts are kept without their image tensor (the grid re-reads `file_name`), and the
    model's training mode is restored afterwards.
    """
    pairs: list[tuple[dict, Instances]] = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for inputs in data_loader:
                outputs = model(inputs)
                for inp, out in zip(inputs, outputs):
                    record = {k: v for k, v in inp.items() if k != "image"}
                    pairs.append((record, out["instances"].to("cpu")))
                    if len(pairs) >= num_images:
                        return pairs
    finally:
        model.train(was_training)
    return pairs


def _draw_with_pil(image: np.ndarray, instances: Instances, metadata) -> np.ndarray:
    canvas = Image.fromarray(image)
    draw = ImageDraw.Draw(canvas)
    colors = colormap(rgb=True, maximum=255).astype(int)
    names = metadata.get("thing_classes", None)
    boxes = instances.pred_boxes.tensor.tolist() if instances.has("pred_boxes") else []
    classes = instances.pred_classes.tolist() if instances.has("pred_classes") else [0] * len(boxes)
    scores = instances.scores.tolist() if instances.has("scores") else [None] * len(boxes)
    width = max(1, round(max(image.shape[:2]) / 300))
    for box, cls, score in zip(boxes, classes, scores):
        color = tuple(int(c) for c in colors[cls % len(colors)])
        draw.rectangle(box, outline=color, width=width)
        label = names[cls] if names and cls < len(names) else str(cls)
        if score is not None:
            label += f" {score:.0%}"
        x, y = box[0], max(0.0, box[1] - 11)
        draw.rectangle(draw.textbbox((x, y), label), fill=(0, 0, 0))
        draw.text((x, y), label, fill=color)
    return np.asarray(canvas)


def _draw(record: dict, instances: Instances, metadata, score_threshold: float) -> np.ndarray:
    image = read_image(record["file_name"], format="RGB")
    if instances.has("scores"):
        instances = instances[instances.scores >= score_threshold]
    try:
        from detectron2.utils.visualizer import Visualizer
    except ImportError as e:  # OpenCV missing: Detectron2's Visualizer cannot be imported
        if not getattr(_draw, "warned", False):
            logger.warning("Detectron2's Visualizer is unavailable (%s); drawing with PIL", e)
            _draw.warned = True
        return _draw_with_pil(image, instances, metadata)
    return Visualizer(image, metadata).draw_instance_predictions(instances).get_image()


def save_prediction_grid(
    pairs: Sequence[tuple[dict, Instances]],
    metadata,
    out_png: str,
    num_images: int = 4,
    score_threshold: float = 0.5,
    columns: int = 2,
) -> str:
    """Draw the predictions of the first `num_images` pairs and save them as one PNG grid.

    `pairs`: (dataset dict with `file_name`, Instances in that image's coordinates) as returned
    by `collect_predictions` or kept by an evaluator; `metadata`: the data set's Metadata (or its
    name), which gives the class names. Tiles are resized to the first one's size. Returns
    `out_png`.
    """
    if isinstance(metadata, str):
        metadata = MetadataCatalog.get(metadata)
    pairs = list(pairs)[:num_images]
    if not pairs:
        raise ValueError(f"save_prediction_grid({out_png!r}): no predictions to draw")
    tiles = [Image.fromarray(_draw(r, inst, metadata, score_threshold)) for r, inst in pairs]
    width, height = tiles[0].size
    columns = max(1, min(columns, len(tiles)))
    rows = math.ceil(len(tiles) / columns)
    grid = Image.new("RGB", (columns * width, rows * height), (255, 255, 255))
    for k, tile in enumerate(tiles):
        if tile.size != (width, height):
            tile = tile.resize((width, height), Image.BILINEAR)
        grid.paste(tile, ((k % columns) * width, (k // columns) * height))
    os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
    atomic_write(out_png, "wb", lambda f: grid.save(f, format="PNG"))
    return out_png


def save_prediction_grids(
    model: torch.nn.Module,
    data_loaders: Mapping[str, Iterable],
    out_dir: str,
    num_images: int = 4,
    score_threshold: float = 0.5,
) -> dict[str, str]:
    """One grid per data set: `<out_dir>/predictions_<dataset>.png`; returns name -> path.

    `data_loaders` maps each registered test data set to its test loader (e.g.
    `build_detection_test_loader(cfg, name)`).
    """
    paths = {}
    for name, loader in data_loaders.items():
        pairs = collect_predictions(model, loader, num_images)
        out_png = os.path.join(out_dir, f"predictions_{name}.png")
        paths[name] = save_prediction_grid(
            pairs, MetadataCatalog.get(name), out_png, num_images, score_threshold
        )
    return paths
