"""Semantic-segmentation data sets for domain generalization, all in the 19 Cityscapes train ids.

The benchmark trains on synthetic street scenes (GTAV, SYNTHIA, UrbanSyn) and tests on real ones
(Cityscapes, BDD100K, Mapillary Vistas, ACDC). Each release encodes its labels differently; the
id -> Cityscapes-train-id tables live in `seg_labels` (used once by the preparation scripts in
`datasets/`). This module registers every data set lazily, as the detection data sets are: no
file is read before `DatasetCatalog.get`, and a missing folder or label file raises a
`DatasetFormatError` naming the path and the script that would create it. Cityscapes itself goes
through Detectron2's `load_cityscapes_semantic`; the others share one image/label pairing loader.
The trees are documented in `datasets/README.md`.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .catalog import DatasetFormatError, domain_from_name, register_lazily, require_dir
from .dwd import DWD_SOURCE_DOMAIN, dwd_dataset_names
from .seg_labels import ACDC_CONDITIONS, CITYSCAPES_COLORS, CITYSCAPES_STUFF_CLASSES, IGNORE_LABEL

__all__ = [
    "SEG_DATASET_DOMAINS",
    "SYNTHETIC_SEG_LAYOUT",
    "default_seg_root",
    "default_synthetic_seg_root",
    "load_cityscapes_sem_seg",
    "load_sem_seg_pairs",
    "register_seg_datasets",
    "register_sem_seg_folder",
    "register_synthetic_semseg",
    "sem_seg_metadata",
    "synthetic_semseg_split",
]

logger = logging.getLogger(__name__)

def default_seg_root() -> str:
    """`$DETECTRON2_DATASETS` (default `datasets`), where the segmentation data sets live."""
    return os.environ.get("DETECTRON2_DATASETS", "datasets")


def sem_seg_metadata(domain: str, **extra) -> dict:
    """Metadata every soma-d2 segmentation data set carries (what the evaluator and table read)."""
    return dict(
        stuff_classes=list(CITYSCAPES_STUFF_CLASSES),
        stuff_colors=[list(c) for c in CITYSCAPES_COLORS],
        ignore_label=IGNORE_LABEL,
        evaluator_type="dg_sem_seg",
        domain=domain,
        **extra,
    )


# ---- loaders ---------------------------------------------------------------------------------


def _walk(image_dir: str, suffix: str) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(image_dir):
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, image_dir)
        for name in sorted(filenames):
            if name.endswith(suffix):
                found.append(name if rel_dir == "." else os.path.join(rel_dir, name))
    return found


def load_sem_seg_pairs(
    image_dir: str,
    label_dir: str,
    image_suffix: str,
    label_for: Callable[[str], str],
    what: str,
    hint: str = "see datasets/README.md",
) -> list[dict]:
    """Dataset dicts pairing every `*image_suffix` file under `image_dir` (recursively) with
    `label_dir/label_for(relative path)`; a missing folder, no image, or a missing label file
    raises `DatasetFormatError` naming the path and `hint`. Height/width are not read here (the
    segmentation mapper reads them from the image header when it needs them)."""
    layout = "see datasets/README.md for the expected tree"
    if not os.path.isdir(image_dir):
        raise DatasetFormatError(f"{what}: image folder not found: {image_dir} ({layout})")
    if not os.path.isdir(label_dir):
        raise DatasetFormatError(f"{what}: label folder not found: {label_dir} ({hint})")
    images = _walk(image_dir, image_suffix)
    if not images:
        raise DatasetFormatError(f"{what}: no '*{image_suffix}' image under {image_dir} ({layout})")
    dicts, missing = [], []
    for rel in images:
        label = os.path.join(label_dir, label_for(rel))
        if not os.path.isfile(label):
            missing.append((rel, label))
            continue
        dicts.append({
            "file_name": os.path.join(image_dir, rel),
            "sem_seg_file_name": label,
            "image_id": rel[: -len(image_suffix)] if len(rel) > len(image_suffix) else rel,
        })
    if missing:
        rel, label = missing[0]
        raise DatasetFormatError(
            f"{what}: {len(missing)} of {len(images)} image(s) have no label file, e.g. {label} "
            f"for {os.path.join(image_dir, rel)} ({hint})"
        )
    return dicts


def _replace_suffix(old: str, new: str) -> Callable[[str], str]:
    return lambda rel: rel[: -len(old)] + new


def load_cityscapes_sem_seg(root: str, split: str) -> list[dict]:
    """Cityscapes `leftImg8bit/<split>` + `gtFine/<split>` through Detectron2's
    `load_cityscapes_semantic` (which reads `*_gtFine_labelTrainIds.png` and the polygon JSON for
    the image size); its assertions become `DatasetFormatError`s naming the path."""
    from detectron2.data.datasets.cityscapes import load_cityscapes_semantic

    image_dir = os.path.join(root, "leftImg8bit", split)
    gt_dir = os.path.join(root, "gtFine", split)
    hint = ("create *_gtFine_labelTrainIds.png with cityscapesScripts' "
            "preparation/createTrainIdLabelImgs.py; see datasets/README.md")
    for folder in (image_dir, gt_dir):
        if not os.path.isdir(folder):
            raise DatasetFormatError(
                f"Cityscapes: folder not found: {folder} (see datasets/README.md for the tree)"
            )
    try:
        dicts = load_cityscapes_semantic(image_dir, gt_dir)
    except (AssertionError, FileNotFoundError, KeyError, ValueError) as e:
        raise DatasetFormatError(f"Cityscapes {split} under {root}: {e} ({hint})") from e
    missing = [d["sem_seg_file_name"] for d in dicts if not os.path.isfile(d["sem_seg_file_name"])]
    if missing:
        raise DatasetFormatError(
            f"Cityscapes {split}: {len(missing)} of {len(dicts)} label file(s) missing, e.g. "
            f"{missing[0]} ({hint})"
        )
    return dicts


def _cityscapes(root: str, split: str) -> list[dict]:
    return load_cityscapes_sem_seg(os.path.join(root, "cityscapes"), split)


def _gtav(root: str) -> list[dict]:
    base = os.path.join(root, "gta")
    return load_sem_seg_pairs(
        os.path.join(base, "images"), os.path.join(base, "labels"), ".png",
        lambda rel: os.path.splitext(rel)[0] + "_labelTrainIds.png", "GTAV",
        hint=f"run python datasets/prepare_gtav.py --root {base}",
    )


def _synthia(root: str) -> list[dict]:
    base = os.path.join(root, "synthia")
    return load_sem_seg_pairs(
        os.path.join(base, "RGB"), os.path.join(base, "GT", "LABELS"), ".png",
        lambda rel: os.path.splitext(rel)[0] + "_labelTrainIds.png", "SYNTHIA",
        hint=f"run python datasets/prepare_synthia.py --root {base}",
    )


def _urbansyn_label(rel: str) -> str:
    head, name = os.path.split(os.path.splitext(rel)[0])
    if name.startswith("rgb"):
        name = "ss" + name[3:]
    return os.path.join(head, name + "_labelTrainIds.png")


def _urbansyn(root: str) -> list[dict]:
    base = os.path.join(root, "urbansyn")
    return load_sem_seg_pairs(
        os.path.join(base, "rgb"), os.path.join(base, "ss"), ".png", _urbansyn_label, "UrbanSyn",
        hint=f"run python datasets/prepare_urbansyn.py --root {base}",
    )


def _bdd(root: str, split: str) -> list[dict]:
    base = os.path.join(root, "bdd100k")
    current = os.path.join(base, "labels", "sem_seg", "masks", split)
    if os.path.isdir(current) or not os.path.isdir(os.path.join(base, "seg")):
        return load_sem_seg_pairs(
            os.path.join(base, "images", "10k", split), current, ".jpg",
            lambda rel: os.path.splitext(rel)[0] + ".png", f"BDD100K {split}",
        )
    return load_sem_seg_pairs(  # the first release: bdd100k/seg/{images,labels}
        os.path.join(base, "seg", "images", split), os.path.join(base, "seg", "labels", split),
        ".jpg", lambda rel: os.path.splitext(rel)[0] + "_train_id.png", f"BDD100K {split}",
    )


def _mapillary(root: str, split: str) -> list[dict]:
    base = os.path.join(root, "mapillary", split)
    return load_sem_seg_pairs(
        os.path.join(base, "images"), os.path.join(base, "labels_trainIds"), ".jpg",
        lambda rel: os.path.splitext(rel)[0] + ".png", f"Mapillary {split}",
        hint=f"run python datasets/prepare_mapillary.py --root {os.path.dirname(base)}",
    )


def _acdc(root: str, conditions: Sequence[str], split: str) -> list[dict]:
    base = os.path.join(root, "acdc")
    dicts = []
    for cond in conditions:
        dicts += load_sem_seg_pairs(
            os.path.join(base, "rgb_anon", cond, split), os.path.join(base, "gt", cond, split),
            "_rgb_anon.png", _replace_suffix("_rgb_anon.png", "_gt_labelTrainIds.png"),
            f"ACDC {cond} {split}",
        )
    return dicts


@dataclass(frozen=True)
class _Spec:
    domain: str
    load: Callable[[str], list[dict]]
    folder: str  # below the root: must exist (checked before anything is built)


def _specs() -> dict[str, _Spec]:
    specs = {
        "gtav_train": _Spec("gtav", _gtav, "gta"),
        "synthia_train": _Spec("synthia", _synthia, "synthia"),
        "urbansyn_train": _Spec("urbansyn", _urbansyn, "urbansyn"),
    }
    # the official Mapillary test set: the half-size validation copy (datasets/prepare_mapillary.py)
    specs["mapillary_val_half"] = _Spec("mapillary", lambda r: _mapillary(r, "validation/half"),
                                         os.path.join("mapillary", "validation", "half"))
    for split in ("train", "val"):
        specs[f"cityscapes_{split}"] = _Spec("cityscapes", lambda r, s=split: _cityscapes(r, s),
                                                  os.path.join("cityscapes", "leftImg8bit", split))
        specs[f"bdd100k_{split}"] = _Spec("bdd100k", lambda r, s=split: _bdd(r, s), "bdd100k")
        mapillary_split = "training" if split == "train" else "validation"
        specs[f"mapillary_{split}"] = _Spec(
            "mapillary", lambda r, s=mapillary_split: _mapillary(r, s),
            os.path.join("mapillary", mapillary_split))
        for cond in ACDC_CONDITIONS:
            specs[f"acdc_{cond}_{split}"] = _Spec(
                f"acdc_{cond}", lambda r, c=cond, s=split: _acdc(r, [c], s),
                os.path.join("acdc", "rgb_anon", cond, split))
        specs[f"acdc_{split}"] = _Spec("acdc", lambda r, s=split: _acdc(r, ACDC_CONDITIONS, s),
                                            os.path.join("acdc", "rgb_anon"))
    return specs


SEG_DATASET_DOMAINS = {name: spec.domain for name, spec in _specs().items()}


def register_seg_datasets(root: str | None = None) -> list[str]:
    """Register the segmentation data sets lazily under `root` (default `$DETECTRON2_DATASETS`).

    Names: `gtav_train`, `synthia_train`, `urbansyn_train` (sources, all images);
    `cityscapes_{train,val}`, `bdd100k_{train,val}`, `mapillary_{train,val}`, `mapillary_val_half`,
    `acdc_{fog,night,rain,snow}_{train,val}` and `acdc_{train,val}` (all four conditions).
    Re-registering with the same root is a no-op; another root replaces the registrations.
    """
    root = os.fspath(root) if root is not None else default_seg_root()
    for name, spec in _specs().items():
        register_lazily(
            name,
            ("sem_seg", root, name),
            lambda spec=spec: spec.load(root),
            sem_seg_metadata(spec.domain, root=root),
            check=lambda spec=spec: require_dir(os.path.join(root, spec.folder),
                                                "folder not found (see datasets/README.md)"),
        )
    return list(SEG_DATASET_DOMAINS)


FOLDER_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


def load_sem_seg_folder(image_dir: str, label_dir: str, what: str) -> list[dict]:
    """Pairs of `image_dir/<rel>.{png,jpg,jpeg}` and `label_dir/<rel>.png` (train ids 0..18)."""
    if not os.path.isdir(image_dir):
        raise DatasetFormatError(f"{what}: image folder not found: {image_dir}")
    found = {ext: _walk(image_dir, ext) for ext in FOLDER_IMAGE_EXTENSIONS}
    ext = max(found, key=lambda e: len(found[e]))
    return load_sem_seg_pairs(
        image_dir, label_dir, ext, lambda rel: rel[: -len(ext)] + ".png", what,
        hint="each image needs a label PNG with the same relative path and stem, "
             f"holding Cityscapes train ids 0..18 and {IGNORE_LABEL} for ignore",
    )


def register_sem_seg_folder(name: str, image_dir: str, label_dir: str,
                            domain: str | None = None) -> None:
    """Register a segmentation domain made of an image folder and a label-PNG folder, lazily.

    Images are the most common of .png/.jpg/.jpeg under `image_dir` (recursively); each pairs with
    the PNG of the same relative path and stem under `label_dir`, in the 19 Cityscapes train ids
    (255 = ignore), the label space of every soma-d2 segmentation model. `domain` defaults to the
    name without its split suffix.
    """
    image_dir, label_dir = os.fspath(image_dir), os.fspath(label_dir)
    register_lazily(
        name,
        ("sem_seg_folder", image_dir, label_dir, domain),
        lambda: load_sem_seg_folder(image_dir, label_dir, f"data set {name}"),
        sem_seg_metadata(domain or domain_from_name(name), image_root=image_dir,
                         sem_seg_root=label_dir),
        check=lambda: _check_folders(image_dir, label_dir),
    )


def _check_folders(image_dir: str, label_dir: str) -> None:
    require_dir(image_dir, "image folder not found")
    require_dir(label_dir, "label folder not found")


# ---- the synthetic weather data, segmentation variant -------------------------------------------

SYNTHETIC_SEG_LAYOUT = {
    "image": os.path.join("{domain}", "leftImg8bit", "{split}", "{domain}", "{id}_leftImg8bit.png"),
    "label": os.path.join(
        "{domain}", "gtFine", "{split}", "{domain}", "{id}_gtFine_labelTrainIds.png"
    ),
}


def default_synthetic_seg_root() -> str:
    """`$DETECTRON2_DATASETS/synthetic_semseg` (`$DETECTRON2_DATASETS` defaults to `datasets`)."""
    return os.path.join(default_seg_root(), "synthetic_semseg")


def synthetic_semseg_split(name: str, domain: str) -> str:
    """Folder split of a synthetic seg data set: the source has train/test, targets only test."""
    if domain != DWD_SOURCE_DOMAIN:
        return "test"
    return "test" if name.endswith("_test") else "train"


def _synthetic_loader(root: str, domain: str, split: str):
    def load() -> list[dict]:
        return load_sem_seg_pairs(
            os.path.join(root, domain, "leftImg8bit", split),
            os.path.join(root, domain, "gtFine", split),
            "_leftImg8bit.png",
            _replace_suffix("_leftImg8bit.png", "_gtFine_labelTrainIds.png"),
            f"synthetic seg {domain} {split}",
            hint="write it with soma_d2.data.synthetic.generate_synthetic_semseg",
        )

    return load


def register_synthetic_semseg(root: str | None = None, prefix: str = "synseg") -> list[str]:
    """Register the synthetic weather segmentation data (`generate_synthetic_semseg`) lazily.

    Names follow the detection variant: `<prefix>_daytime_clear_train`,
    `<prefix>_daytime_clear_test` and `<prefix>_<target>` for the four target domains (all
    their images). Returns the names, source first.
    """
    root = os.fspath(root) if root is not None else default_synthetic_seg_root()
    names = dwd_dataset_names(prefix)
    for name, domain in names.items():
        split = synthetic_semseg_split(name, domain)
        register_lazily(
            name,
            ("synthetic_sem_seg", root, domain, split),
            _synthetic_loader(root, domain, split),
            sem_seg_metadata(domain, root=root, split=split),
            check=lambda domain=domain, split=split: _check_folders(
                os.path.join(root, domain, "leftImg8bit", split),
                os.path.join(root, domain, "gtFine", split)),
        )
    return list(names)
