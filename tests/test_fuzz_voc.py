"""Fuzzing the VOC readers: arbitrary bytes/text and mangled annotations only ever raise
`DatasetFormatError` (naming the source), and valid documents parse exactly as Detectron2's own
`load_voc_instances` (annotations) and numpy's `loadtxt` (split files) read them."""
from __future__ import annotations

import os
import tempfile
from xml.sax.saxutils import escape

import numpy as np
import pytest
from detectron2.data.datasets.pascal_voc import load_voc_instances
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from soma_d2.data.catalog import DatasetFormatError
from soma_d2.data.voc import load_voc_domain, parse_split_text, parse_voc_xml

CLASSES = ("car", "person", "bike")
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _only_format_errors(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except DatasetFormatError as e:
        assert kwargs.get("source", "") in str(e)
        return None


@FUZZ
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_never_crash_the_xml_parser(data):
    _only_format_errors(parse_voc_xml, data, CLASSES, source="fuzz.xml")


# near-valid documents: the right structure with arbitrary (sometimes unescaped) field contents
_field = st.one_of(
    st.integers(-10**6, 10**6).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["", " ", "1e400", "-1e400", "nan", "0x10", "1_000", "½", "&amp;", "]]>"]),
    st.text(max_size=20),
)
_maybe_escaped = st.tuples(_field, st.booleans()).map(lambda t: escape(t[0]) if t[1] else t[0])


@st.composite
def _mangled_doc(draw) -> str:
    parts = ["<annotation>"]
    if draw(st.booleans()):
        parts.append(f"<size><width>{draw(_maybe_escaped)}</width>"
                     f"<height>{draw(_maybe_escaped)}</height></size>")
    for _ in range(draw(st.integers(0, 3))):
        name = draw(st.one_of(st.sampled_from(CLASSES), _maybe_escaped))
        coords = "".join(f"<{t}>{draw(_maybe_escaped)}</{t}>" for t in
                         draw(st.lists(st.sampled_from(["xmin", "ymin", "xmax", "ymax"]),
                                       max_size=5)))
        box = f"<bndbox>{coords}</bndbox>" if draw(st.booleans()) else ""
        extra = f"<difficult>{draw(_maybe_escaped)}</difficult>" if draw(st.booleans()) else ""
        parts.append(f"<object><name>{name}</name>{extra}{box}</object>")
    parts.append("</annotation>")
    header = draw(st.sampled_from(["", '<?xml version="1.0"?>', '<?xml version="1.0" '
                                   'encoding="latin-1"?>', '<?xml version="1.0" encoding="x"?>']))
    return header + "".join(parts)


@FUZZ
@given(_mangled_doc(), st.sampled_from(["utf-8", "latin-1", "utf-16"]))
def test_mangled_annotations_only_raise_format_errors(doc, encoding):
    data = doc.encode(encoding, errors="replace")
    record = _only_format_errors(parse_voc_xml, data, CLASSES, source="mangled.xml")
    if record is not None:
        for obj in record.objects:
            assert obj.name in CLASSES and len(obj.bbox) == 4
            assert all(np.isfinite(obj.bbox))


@FUZZ
@given(st.text(max_size=500))
def test_arbitrary_split_text_gives_ids_or_a_format_error(text):
    ids = _only_format_errors(parse_split_text, text, source="fuzz.txt")
    if ids is not None:
        assert ids and len(set(ids)) == len(ids)
        assert all(i and not any(c.isspace() for c in i) for i in ids)


@SLOW
@given(st.binary(max_size=300))
def test_arbitrary_split_file_bytes_only_raise_format_errors(data):
    with tempfile.TemporaryDirectory() as root:
        for sub in ("ImageSets/Main", "JPEGImages", "Annotations"):
            os.makedirs(os.path.join(root, sub))
        with open(os.path.join(root, "ImageSets", "Main", "train.txt"), "wb") as f:
            f.write(data)
        _only_format_errors(load_voc_domain, root, "train", CLASSES)


# ---- valid documents against independent readers ----------------------------------------------

_ident = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_",
                 min_size=1, max_size=12)


@st.composite
def _valid_object(draw) -> dict:
    x1, y1 = draw(st.integers(1, 500)), draw(st.integers(1, 500))
    return {"name": draw(st.sampled_from(CLASSES)), "difficult": draw(st.integers(0, 1)),
            "truncated": draw(st.integers(0, 1)),
            "box": (x1, y1, x1 + draw(st.integers(0, 300)), y1 + draw(st.integers(0, 300)))}


def _valid_xml(width: int, height: int, objects: list[dict]) -> str:
    body = "".join(
        f"<object><name>{o['name']}</name><pose>Unspecified</pose>"
        f"<truncated>{o['truncated']}</truncated><difficult>{o['difficult']}</difficult>"
        f"<bndbox><xmin>{o['box'][0]}</xmin><ymin>{o['box'][1]}</ymin>"
        f"<xmax>{o['box'][2]}</xmax><ymax>{o['box'][3]}</ymax></bndbox></object>"
        for o in objects
    )
    return (f"<annotation><folder>VOC</folder><filename>x.jpg</filename><size><width>{width}"
            f"</width><height>{height}</height><depth>3</depth></size>{body}</annotation>")


_valid_docs = st.lists(
    st.tuples(_ident, st.integers(1, 4000), st.integers(1, 4000),
              st.lists(_valid_object(), max_size=4)),
    min_size=2, max_size=4, unique_by=lambda t: t[0],
)


@SLOW
@given(_valid_docs)
def test_valid_annotations_parse_like_detectron2(docs):
    with tempfile.TemporaryDirectory() as root:
        for sub in ("ImageSets/Main", "Annotations"):
            os.makedirs(os.path.join(root, sub))
        with open(os.path.join(root, "ImageSets", "Main", "train.txt"), "w") as f:
            f.write("\n".join(d[0] for d in docs) + "\n")
        for image_id, width, height, objects in docs:
            with open(os.path.join(root, "Annotations", image_id + ".xml"), "w") as f:
                f.write(_valid_xml(width, height, objects))
        reference = {r["image_id"]: r for r in load_voc_instances(root, "train", CLASSES)}
    for image_id, width, height, objects in docs:
        ours = parse_voc_xml(_valid_xml(width, height, objects).encode(), CLASSES)
        ref = reference[image_id]
        assert (ours.width, ours.height) == (ref["width"], ref["height"])
        assert [o.category_id for o in ours.objects] == [a["category_id"] for a in ref["annotations"]]
        assert [o.bbox for o in ours.objects] == [a["bbox"] for a in ref["annotations"]]
        assert [o.difficult for o in ours.objects] == [o["difficult"] for o in objects]
        assert [o.truncated for o in ours.objects] == [o["truncated"] for o in objects]


@pytest.mark.filterwarnings("ignore:Input line:UserWarning")  # loadtxt on blank lines
@FUZZ
@given(st.lists(_ident, min_size=2, max_size=30, unique=True),
       st.lists(st.sampled_from(["", " 1", " -1", "\t0"]), min_size=30, max_size=30),
       st.lists(st.booleans(), min_size=30, max_size=30))
def test_valid_split_files_read_like_numpy_loadtxt(ids, flags, blank_after):
    class_specific = bool(flags[0])
    lines = []
    for i, image_id in enumerate(ids):
        lines.append(image_id + (flags[i] or " 1" if class_specific else ""))
        if blank_after[i]:
            lines.append("")
    text = "\n".join(lines) + "\n"
    reference = np.loadtxt(text.splitlines(), dtype=str, ndmin=2)[:, 0].tolist()
    assert parse_split_text(text) == reference == ids
