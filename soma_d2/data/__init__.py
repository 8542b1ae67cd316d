"""Data sets for domain generalization: DWD, any VOC/COCO domain, the synthetic weather data.

Importing this package registers the Diverse Weather data sets lazily under the default root
(`$DETECTRON2_DATASETS/diverseWeather`); call `register_dwd(root)` to point them elsewhere. The
segmentation data sets (GTAV, SYNTHIA, UrbanSyn, Cityscapes, BDD100K, Mapillary, ACDC, and the
synthetic weather variant) are registered the same way (`register_seg_datasets`,
`register_synthetic_semseg`).
"""
from .catalog import DatasetFormatError, domain_from_name
from .coco import register_coco_domain
from .dwd import (
    DWD_CLASSES,
    DWD_DOMAINS,
    DWD_SOURCE_DOMAIN,
    default_dwd_root,
    dwd_dataset_names,
    find_domain_dir,
    register_dwd,
)
from .seg_datasets import (
    SEG_DATASET_DOMAINS,
    load_sem_seg_pairs,
    register_seg_datasets,
    register_synthetic_semseg,
)
from .seg_labels import CITYSCAPES_STUFF_CLASSES, LabelMap, make_label_map
from .seg_mapper import SemSegDatasetMapper, build_sem_seg_augmentations, build_sem_seg_mapper
from .voc import clip_objects, load_voc_domain, parse_split_text, parse_voc_xml, register_voc_domain

__all__ = [
    "DWD_CLASSES",
    "DWD_DOMAINS",
    "DWD_SOURCE_DOMAIN",
    "DatasetFormatError",
    "clip_objects",
    "default_dwd_root",
    "domain_from_name",
    "dwd_dataset_names",
    "find_domain_dir",
    "load_voc_domain",
    "parse_split_text",
    "parse_voc_xml",
    "register_coco_domain",
    "register_dwd",
    "register_voc_domain",
    "CITYSCAPES_STUFF_CLASSES",
    "SEG_DATASET_DOMAINS",
    "LabelMap",
    "load_sem_seg_pairs",
    "make_label_map",
    "register_seg_datasets",
    "register_synthetic_semseg",
    "SemSegDatasetMapper",
    "build_sem_seg_augmentations",
    "build_sem_seg_mapper",
]

register_dwd()
register_seg_datasets()
register_synthetic_semseg()
