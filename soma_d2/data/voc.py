"""Pascal-VOC-layout domains: strict parsing and lazy registration in Detectron2's catalogs.

Detectron2's own `load_voc_instances` trusts its input: a typo in a split file or a class name
surfaces as a KeyError deep inside training. Domain-generalization data sets are assembled from
many sources, so here every defect is reported as a `DatasetFormatError` naming the file (and the
line of a split file). Parsing is split into pure functions on bytes/text (`parse_split_text`,
`parse_voc_xml`, `clip_objects`) so they can be fuzzed without touching the disk. Coordinates
follow Detectron2's convention (1-based VOC pixels: x1 -= 1, y1 -= 1), so Detectron2's
`PascalVOCDetectionEvaluator` and ours agree on the same data.
"""
from __future__ import annotations

import logging
import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field

from detectron2.structures import BoxMode

from .catalog import (
    DatasetFormatError,
    domain_from_name,
    register_lazily,
    require_dir,
    require_file,
)

__all__ = [
    "VOCObject",
    "check_voc_folder",
    "VOCRecord",
    "parse_split_text",
    "parse_voc_xml",
    "clip_objects",
    "load_voc_domain",
    "register_voc_domain",
]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG", ".bmp")



@dataclass
class VOCObject:
    """One `<object>` of a VOC XML, boxes already in Detectron2's 0-based XYXY convention."""

    name: str
    category_id: int
    bbox: list[float]
    difficult: int = 0
    truncated: int = 0


@dataclass
class VOCRecord:
    """The parsed content of one VOC XML; width/height are 0 when `<size>` is absent."""

    width: int
    height: int
    objects: list[VOCObject] = field(default_factory=list)
    filename: str | None = None


def parse_split_text(text: str, source: str = "<split file>") -> list[str]:
    """Image ids of a VOC `ImageSets/Main/<split>.txt`: the first token of each non-empty line.

    Class-specific split files (`id  1`) are accepted; duplicate ids are refused (they would be
    counted twice by the evaluation), and so is a file without any id.
    """
    ids: list[str] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        tokens = line.split()
        if not tokens:
            continue
        image_id = tokens[0]
        if image_id in seen:
            raise DatasetFormatError(
                f"{source}:{lineno}: image id {image_id!r} already listed on line {seen[image_id]}"
            )
        seen[image_id] = lineno
        ids.append(image_id)
    if not ids:
        raise DatasetFormatError(f"{source}: split file lists no image id")
    return ids


def _int_field(node: ET.Element | None, tag: str, source: str, default: int = 0) -> int:
    child = None if node is None else node.find(tag)
    if child is None or child.text is None or not child.text.strip():
        return default
    try:
        return int(float(child.text))
    except (ValueError, OverflowError) as e:  # "abc", "nan", "1e400"
        raise DatasetFormatError(f"{source}: <{tag}> is not a number: {child.text!r}") from e


def parse_voc_xml(data: bytes | str, classes: Sequence[str], source: str = "<xml>") -> VOCRecord:
    """Parse one VOC annotation; unknown classes and unreadable boxes raise DatasetFormatError.

    Boxes are returned as floats in Detectron2's convention (`xmin - 1, ymin - 1, xmax, ymax`) and
    are not clipped here (`clip_objects` does that once the image size is known).
    """
    try:
        root = ET.fromstring(data)
    except (ET.ParseError, LookupError, ValueError) as e:  # LookupError: unknown encoding="..."
        raise DatasetFormatError(f"{source}: malformed XML ({e})") from e
    if root.tag != "annotation":
        raise DatasetFormatError(f"{source}: root element is <{root.tag}>, expected <annotation>")
    size = root.find("size")
    record = VOCRecord(
        width=_int_field(size, "width", source),
        height=_int_field(size, "height", source),
        filename=(root.findtext("filename") or None),
    )
    class_index = {c: i for i, c in enumerate(classes)}
    for k, obj in enumerate(root.findall("object")):
        name = (obj.findtext("name") or "").strip()
        if name not in class_index:
            raise DatasetFormatError(
                f"{source}: object {k} has unknown class {name!r}; known classes: {list(classes)}"
            )
        box = obj.find("bndbox")
        if box is None:
            raise DatasetFormatError(f"{source}: object {k} ({name}) has no <bndbox>")
        coords = []
        for tag in ("xmin", "ymin", "xmax", "ymax"):
            text = box.findtext(tag)
            try:
                coords.append(float(text))
            except (TypeError, ValueError) as e:
                raise DatasetFormatError(
                    f"{source}: object {k} ({name}) has an invalid <{tag}>: {text!r}"
                ) from e
        if not all(c == c and abs(c) != float("inf") for c in coords):
            raise DatasetFormatError(f"{source}: object {k} ({name}) has a non-finite box")
        coords[0] -= 1.0
        coords[1] -= 1.0
        record.objects.append(
            VOCObject(
                name=name,
                category_id=class_index[name],
                bbox=coords,
                difficult=_int_field(obj, "difficult", source),
                truncated=_int_field(obj, "truncated", source),
            )
        )
    return record


def clip_objects(
    objects: Sequence[VOCObject], width: int, height: int
) -> tuple[list[dict], int]:
    """Detectron2 annotations of `objects`, boxes clipped to the image, degenerate ones dropped.

    Returns the annotations and the number of dropped boxes (zero width or height after clipping),
    so that the caller can report them once per data set instead of once per box.
    """
    annotations = []
    dropped = 0
    for obj in objects:
        x1, y1, x2, y2 = obj.bbox
        x1, x2 = min(max(x1, 0.0), float(width)), min(max(x2, 0.0), float(width))
        y1, y2 = min(max(y1, 0.0), float(height)), min(max(y2, 0.0), float(height))
        if x2 <= x1 or y2 <= y1:
            dropped += 1
            continue
        annotations.append(
            {
                "bbox": [x1, y1, x2, y2],
                "bbox_mode": BoxMode.XYXY_ABS,
                "category_id": obj.category_id,
                "difficult": int(obj.difficult),
                "truncated": int(obj.truncated),
            }
        )
    return annotations, dropped


def _read_bytes(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError as e:
        raise DatasetFormatError(f"{what} not found: {path}") from e
    except OSError as e:
        raise DatasetFormatError(f"cannot read {what} {path}: {e}") from e


def _find_image(image_dir: str, image_id: str, names: set[str]) -> str | None:
    for ext in IMAGE_EXTENSIONS:
        if image_id + ext in names:
            return os.path.join(image_dir, image_id + ext)
    return None


def _image_size(path: str) -> tuple[int, int]:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size
    except OSError as e:
        raise DatasetFormatError(f"cannot read the size of image {path}: {e}") from e


def load_voc_domain(dirname: str, split: str, classes: Sequence[str]) -> list[dict]:
    """Detectron2 dataset dicts of `<dirname>/ImageSets/Main/<split>.txt` (strict, see module doc).

    Each record has `file_name`, `image_id` (the VOC id, a string, as Detectron2's VOC loader and
    evaluator use), `height`, `width` and `annotations` (XYXY_ABS boxes with `category_id`,
    `difficult`, `truncated`).
    """
    split_file = os.path.join(dirname, "ImageSets", "Main", split + ".txt")
    try:
        text = _read_bytes(split_file, "split file").decode("utf-8")
    except UnicodeDecodeError as e:
        raise DatasetFormatError(f"{split_file}: not UTF-8 text ({e})") from e
    ids = parse_split_text(text, source=split_file)
    image_dir = os.path.join(dirname, "JPEGImages")
    anno_dir = os.path.join(dirname, "Annotations")
    try:
        image_names = set(os.listdir(image_dir))
        anno_names = set(os.listdir(anno_dir))
    except FileNotFoundError as e:
        raise DatasetFormatError(f"missing folder: {e.filename}") from e
    lines = {image_id: n for n, image_id in _numbered(text)}
    dicts = []
    dropped_total = 0
    for image_id in ids:
        xml_path = os.path.join(anno_dir, image_id + ".xml")
        if image_id + ".xml" not in anno_names:
            raise DatasetFormatError(
                f"{split_file}:{lines[image_id]}: id {image_id!r} has no annotation {xml_path}"
            )
        image_path = _find_image(image_dir, image_id, image_names)
        if image_path is None:
            raise DatasetFormatError(
                f"{split_file}:{lines[image_id]}: id {image_id!r} has no image "
                f"{os.path.join(image_dir, image_id + '.jpg')}"
            )
        record = parse_voc_xml(_read_bytes(xml_path, "annotation"), classes, source=xml_path)
        width, height = record.width, record.height
        if width <= 0 or height <= 0:
            width, height = _image_size(image_path)
        annotations, dropped = clip_objects(record.objects, width, height)
        dropped_total += dropped
        dicts.append(
            {
                "file_name": image_path,
                "image_id": image_id,
                "height": height,
                "width": width,
                "annotations": annotations,
            }
        )
    if dropped_total:
        logger.warning(
            "%s (%s): dropped %d degenerate box(es) (empty after clipping to the image)",
            dirname,
            split,
            dropped_total,
        )
    return dicts


def check_voc_folder(dirname: str, split: str) -> None:
    """What `load_voc_domain` needs, without reading it: the split file and the Annotations/ and
    JPEGImages/ folders (DatasetFormatError naming the first missing path)."""
    require_dir(dirname, "missing folder")
    require_file(os.path.join(dirname, "ImageSets", "Main", split + ".txt"), "split file not found")
    for sub in ("JPEGImages", "Annotations"):
        require_dir(os.path.join(dirname, sub), "missing folder")


def _numbered(text: str):
    for lineno, line in enumerate(text.splitlines(), start=1):
        tokens = line.split()
        if tokens:
            yield lineno, tokens[0]


# name -> the arguments it was registered with, so re-registration is a no-op or a replacement
def register_voc_domain(
    name: str,
    root: str,
    split: str,
    classes: Sequence[str],
    domain: str | None = None,
) -> None:
    """Register the VOC-layout folder `root` (holding Annotations/, JPEGImages/, ImageSets/Main/).

    Lazy: nothing is read until `DatasetCatalog.get(name)`. Metadata: `domain` (default: the name
    without its split suffix), `evaluator_type="dg_voc"`, `thing_classes`, and `dirname`, `split`,
    `year=2007` so that Detectron2's `PascalVOCDetectionEvaluator` also runs on it.
    """
    classes = tuple(classes)
    root = os.fspath(root)
    register_lazily(
        name,
        ("voc", root, split, classes, domain),
        lambda: load_voc_domain(root, split, classes),
        dict(
            thing_classes=list(classes),
            dirname=root,
            split=split,
            year=2007,
            domain=domain or domain_from_name(name),
            evaluator_type="dg_voc",
        ),
        check=lambda: check_voc_folder(root, split),
    )
