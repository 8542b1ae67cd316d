"""Data sets for domain generalization: DWD, any VOC/COCO domain, the synthetic weather data.

Importing this package registers the Diverse Weather data sets lazily under the default root
(`$DETECTRON2_DATASETS/diverseWeather`); call `register_dwd(root)` to point them elsewhere.
"""
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
from .voc import (
    DatasetFormatError,
    clip_objects,
    domain_from_name,
    load_voc_domain,
    parse_split_text,
    parse_voc_xml,
    register_voc_domain,
)

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
]

register_dwd()
