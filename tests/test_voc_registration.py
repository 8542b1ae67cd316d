"""VOC parsing and DWD/VOC registration: strict errors naming the file, lazy and idempotent."""
from __future__ import annotations

import logging
import os

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import soma_d2.data as data
from soma_d2.data import (
    DWD_CLASSES,
    DWD_DOMAINS,
    DatasetFormatError,
    clip_objects,
    load_voc_domain,
    parse_split_text,
    parse_voc_xml,
    register_dwd,
    register_voc_domain,
)

CLASSES = ("car", "person")


def _xml(objects, width=64, height=48, size=True) -> str:
    parts = ["<annotation>", "<filename>x.jpg</filename>"]
    if size:
        parts.append(f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>")
    for name, box, difficult in objects:
        parts.append(
            f"<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated>"
            f"<difficult>{difficult}</difficult><bndbox><xmin>{box[0]}</xmin><ymin>{box[1]}</ymin>"
            f"<xmax>{box[2]}</xmax><ymax>{box[3]}</ymax></bndbox></object>"
        )
    parts.append("</annotation>")
    return "\n".join(parts)


def make_voc(root, images: dict[str, str], split_ids=None, split="test", size=(64, 48)):
    """A VOC folder: `images` maps id -> XML text; every id gets a JPEG of `size`."""
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    for image_id, xml in images.items():
        image_path = os.path.join(root, "JPEGImages", image_id + ".jpg")
        Image.new("RGB", size, (90, 90, 90)).save(image_path)
        with open(os.path.join(root, "Annotations", image_id + ".xml"), "w") as f:
            f.write(xml)
    ids = list(images) if split_ids is None else split_ids
    with open(os.path.join(root, "ImageSets", "Main", split + ".txt"), "w") as f:
        f.write("\n".join(ids) + "\n")
    return str(root)


@pytest.fixture
def voc(tmp_path):
    return make_voc(
        tmp_path / "voc",
        {
            "a": _xml([("car", (1, 1, 64, 48), 0), ("person", (10, 5, 20, 40), 1)]),
            "b": _xml([("person", (3, 4, 30, 30), 0)]),
        },
    )


def test_parse_voc_xml_follows_detectron2_conventions():
    rec = parse_voc_xml(_xml([("person", (10, 5, 20, 40), 1)]).encode(), CLASSES, "f.xml")
    assert (rec.width, rec.height) == (64, 48)
    (obj,) = rec.objects
    assert obj.bbox == [9.0, 4.0, 20.0, 40.0]  # 1-based VOC -> Detectron2: x1 -= 1, y1 -= 1
    assert (obj.category_id, obj.difficult) == (1, 1)


def test_load_voc_domain_records(voc):
    dicts = load_voc_domain(voc, "test", CLASSES)
    assert [d["image_id"] for d in dicts] == ["a", "b"]
    a = dicts[0]
    assert a["file_name"] == os.path.join(voc, "JPEGImages", "a.jpg")
    assert (a["height"], a["width"]) == (48, 64)
    assert a["annotations"][0]["bbox"] == [0.0, 0.0, 64.0, 48.0]
    assert a["annotations"][0]["bbox_mode"] == BoxMode.XYXY_ABS
    assert [x["difficult"] for x in a["annotations"]] == [0, 1]
    assert [x["category_id"] for x in a["annotations"]] == [0, 1]


def test_size_from_image_header_when_xml_has_none(tmp_path):
    root = make_voc(tmp_path / "v", {"a": _xml([("car", (1, 1, 5, 5), 0)], size=False)},
                    size=(37, 21))
    (d,) = load_voc_domain(root, "test", CLASSES)
    assert (d["width"], d["height"]) == (37, 21)


def test_split_text_parsing():
    assert parse_split_text("a\n\n b  1\nc -1\n") == ["a", "b", "c"]
    with pytest.raises(DatasetFormatError, match=r"s.txt:3: .*'a'.*line 1"):
        parse_split_text("a\nb\na\n", source="s.txt")
    with pytest.raises(DatasetFormatError, match="no image id"):
        parse_split_text("\n \n", source="s.txt")


def test_missing_image_names_file_and_line(voc):
    os.remove(os.path.join(voc, "JPEGImages", "b.jpg"))
    with pytest.raises(DatasetFormatError, match=r"test\.txt:2: id 'b' has no image .*b\.jpg"):
        load_voc_domain(voc, "test", CLASSES)


def test_missing_xml_names_file_and_line(voc):
    os.remove(os.path.join(voc, "Annotations", "a.xml"))
    with pytest.raises(DatasetFormatError, match=r"test\.txt:1: id 'a' has no annotation .*a\.xml"):
        load_voc_domain(voc, "test", CLASSES)


def test_split_id_absent_names_line(tmp_path):
    root = make_voc(tmp_path / "v", {"a": _xml([])}, split_ids=["a", "", "ghost"])
    with pytest.raises(DatasetFormatError, match=r"test\.txt:3: id 'ghost'"):
        load_voc_domain(root, "test", CLASSES)


def test_malformed_xml_names_file(voc):
    with open(os.path.join(voc, "Annotations", "b.xml"), "w") as f:
        f.write("<annotation><object>")
    with pytest.raises(DatasetFormatError, match=r"b\.xml: malformed XML"):
        load_voc_domain(voc, "test", CLASSES)


def test_unknown_class_names_file_and_class(voc):
    with open(os.path.join(voc, "Annotations", "b.xml"), "w") as f:
        f.write(_xml([("tractor", (1, 1, 5, 5), 0)]))
    with pytest.raises(DatasetFormatError, match=r"b\.xml: .*unknown class 'tractor'"):
        load_voc_domain(voc, "test", CLASSES)


def test_bad_coordinate_names_file(voc):
    with open(os.path.join(voc, "Annotations", "a.xml"), "w") as f:
        f.write(_xml([("car", ("x", 1, 5, 5), 0)]))
    with pytest.raises(DatasetFormatError, match=r"a\.xml: .*<xmin>"):
        load_voc_domain(voc, "test", CLASSES)


def test_missing_split_file_and_folder(voc, tmp_path):
    with pytest.raises(DatasetFormatError, match=r"split file not found: .*val\.txt"):
        load_voc_domain(voc, "val", CLASSES)
    with pytest.raises(DatasetFormatError, match="split file not found"):
        load_voc_domain(str(tmp_path / "nowhere"), "test", CLASSES)


def test_degenerate_boxes_dropped_with_one_warning(tmp_path, caplog):
    root = make_voc(
        tmp_path / "v",
        {
            # clipped to the image, kept
            "a": _xml([("car", (-5, 2, 80, 60), 0), ("car", (70, 2, 90, 10), 0)]),
            # zero width after clipping, and inverted
            "b": _xml([("car", (10, 10, 9, 20), 0), ("person", (5, 5, 8, 9), 0)]),
        },
    )
    with caplog.at_level(logging.WARNING, logger="soma_d2.data.voc"):
        dicts = load_voc_domain(root, "test", CLASSES)
    warnings = [r for r in caplog.records if "degenerate" in r.getMessage()]
    assert len(warnings) == 1 and "dropped 2 degenerate" in warnings[0].getMessage()
    assert dicts[0]["annotations"][0]["bbox"] == [0.0, 1.0, 64.0, 48.0]
    assert len(dicts[0]["annotations"]) == 1 and len(dicts[1]["annotations"]) == 1


def test_clip_objects_counts_drops():
    rec = parse_voc_xml(_xml([("car", (3, 1, 2, 9), 0), ("car", (2, 2, 9, 9), 0)]), CLASSES)
    annotations, dropped = clip_objects(rec.objects, 8, 8)
    assert dropped == 1 and annotations[0]["bbox"] == [1.0, 1.0, 8.0, 8.0]


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=300) | st.text(max_size=300).map(lambda t: "<annotation>" + t))
def test_parse_voc_xml_fuzz_only_raises_format_errors(blob):
    try:
        rec = parse_voc_xml(blob, CLASSES, "fuzz.xml")
    except DatasetFormatError as e:
        assert "fuzz.xml" in str(e)
    else:
        assert all(o.name in CLASSES for o in rec.objects)


def test_register_voc_domain_is_lazy_and_idempotent(voc, tmp_path):
    name = "tvoc_lazy_test"
    register_voc_domain(name, str(tmp_path / "missing"), "test", CLASSES)  # nothing read yet
    meta = MetadataCatalog.get(name)
    assert meta.domain == "tvoc_lazy" and meta.evaluator_type == "dg_voc"
    assert (meta.year, meta.split, meta.thing_classes) == (2007, "test", list(CLASSES))
    with pytest.raises(DatasetFormatError):
        DatasetCatalog.get(name)
    register_voc_domain(name, voc, "test", CLASSES, domain="fog")  # another root replaces it
    assert MetadataCatalog.get(name).dirname == voc and MetadataCatalog.get(name).domain == "fog"
    loader = DatasetCatalog[name]
    register_voc_domain(name, voc, "test", CLASSES, domain="fog")  # same arguments: no-op
    assert DatasetCatalog[name] is loader
    assert len(DatasetCatalog.get(name)) == 2


def _dwd_tree(root, spellings):
    for domain, folder in spellings.items():
        xml = _xml([(DWD_CLASSES[DWD_DOMAINS.index(domain)], (2, 2, 30, 30), 0)])
        voc = os.path.join(root, folder, "VOC2007")
        make_voc(voc, {f"{domain}_1": xml, f"{domain}_2": xml}, split="train")
        if domain == "daytime_clear":
            with open(os.path.join(voc, "ImageSets", "Main", "test.txt"), "w") as f:
                f.write(f"{domain}_2\n")
    return str(root)


def test_register_dwd_accepts_folder_spellings(tmp_path):
    spellings = {
        "daytime_clear": "Daytime-Clear",
        "night_sunny": "Night-Sunny",
        "dusk_rainy": "dusk_rainy",
        "night_rainy": "NIGHT_RAINY",
        "daytime_foggy": "Daytime-Foggy",
    }
    root = _dwd_tree(tmp_path / "dwd", spellings)
    names = register_dwd(root, prefix="tdwd")
    assert names == ["tdwd_daytime_clear_train", "tdwd_daytime_clear_test", "tdwd_night_sunny",
                     "tdwd_dusk_rainy", "tdwd_night_rainy", "tdwd_daytime_foggy"]
    assert [d["image_id"] for d in DatasetCatalog.get("tdwd_daytime_clear_test")] == [
        "daytime_clear_2"]
    assert len(DatasetCatalog.get("tdwd_daytime_clear_train")) == 2
    fog = DatasetCatalog.get("tdwd_daytime_foggy")
    assert len(fog) == 2 and fog[0]["annotations"][0]["category_id"] == 4  # person
    meta = MetadataCatalog.get("tdwd_night_sunny")
    assert meta.domain == "night_sunny" and meta.split == "train" and meta.year == 2007
    assert meta.dirname == os.path.join(root, "Night-Sunny", "VOC2007")
    assert meta.thing_classes == ["bus", "bike", "car", "motor", "person", "rider", "truck"]
    assert MetadataCatalog.get("tdwd_daytime_clear_test").split == "test"


def test_register_dwd_default_root_and_missing_domain(tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    assert data.default_dwd_root() == os.path.join(str(tmp_path), "diverseWeather")
    register_dwd(prefix="tdwdmiss")  # nothing exists: registration still succeeds (lazy)
    with pytest.raises(DatasetFormatError, match=r"night_rainy.*datasets/README.md"):
        DatasetCatalog.get("tdwdmiss_night_rainy")


def test_import_registers_default_dwd_names():
    for name in ("dwd_daytime_clear_train", "dwd_daytime_clear_test", "dwd_night_sunny",
                 "dwd_dusk_rainy", "dwd_night_rainy", "dwd_daytime_foggy"):
        assert name in DatasetCatalog.list()
    assert DWD_DOMAINS[0] == "daytime_clear" and len(DWD_DOMAINS) == 5
    assert np.all([MetadataCatalog.get("dwd_" + d).domain == d for d in DWD_DOMAINS[1:]])


def test_find_domain_dir_without_voc2007_level(tmp_path):
    make_voc(tmp_path / "Dusk-Rainy", {"x": _xml([])}, split="train")
    assert data.find_domain_dir(str(tmp_path), "dusk_rainy") == str(tmp_path / "Dusk-Rainy")
    (tmp_path / "dusk-rainy").mkdir()
    with pytest.raises(DatasetFormatError, match="several folders match"):
        data.find_domain_dir(str(tmp_path), "dusk_rainy")
