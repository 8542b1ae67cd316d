"""Own data sets from the command line: `DATASETS.REGISTER` entries and `--register-module`.

Parsing errors name the entry and the form and come before anything is built; a name registered
twice with different contents is refused; a VOC folder with its own classes (outside the DWD
layout) trains and evaluates through tools/train_net.py with only command-line arguments.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import types

import numpy as np
import pytest
import train_net_helpers as helpers
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from soma_d2.config import build_cfg
from soma_d2.data.catalog import DatasetFormatError
from soma_d2.data.catalog_entries import (
    import_registration_modules,
    parse_dataset_entry,
    register_dataset_entries,
)
from soma_d2.data.dwd import DWD_CLASSES
from soma_d2.engine.setup import check_arguments, setup_cfg

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs", "test", "tiny_soma_det.yaml")
CLASSES = ("widget", "gizmo")


def make_own_voc(root: str, n: int = 8, size: int = 128) -> str:
    """A VOC-format folder (no VOC2007 level, no DWD domain names) with classes widget/gizmo:
    red squares are widgets, blue bars gizmos; ids 0-5 in train.txt, 6-7 in val.txt."""
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    rng = np.random.default_rng(0)
    ids = [f"img{i:02d}" for i in range(n)]
    for image_id in ids:
        image = np.full((size, size, 3), 200, np.uint8)
        objects = []
        for name, color, (w, h) in (("widget", (220, 30, 30), (30, 30)),
                                    ("gizmo", (30, 30, 220), (50, 20))):
            x, y = (int(v) for v in rng.integers(2, size - 55, 2))
            image[y:y + h, x:x + w] = color
            objects.append(
                f"<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated>"
                f"<difficult>0</difficult><bndbox><xmin>{x + 1}</xmin><ymin>{y + 1}</ymin>"
                f"<xmax>{x + w}</xmax><ymax>{y + h}</ymax></bndbox></object>"
            )
        Image.fromarray(image).save(os.path.join(root, "JPEGImages", image_id + ".jpg"))
        with open(os.path.join(root, "Annotations", image_id + ".xml"), "w") as f:
            f.write(f"<annotation><filename>{image_id}.jpg</filename><size><width>{size}</width>"
                    f"<height>{size}</height><depth>3</depth></size>{''.join(objects)}"
                    "</annotation>")
    for split, part in (("train", ids[:6]), ("val", ids[6:])):
        with open(os.path.join(root, "ImageSets", "Main", split + ".txt"), "w") as f:
            f.write("\n".join(part) + "\n")
    return root


# ---------------------------------------------------------------- parsing
def test_entry_forms_parse_with_defaults(tmp_path):
    e = parse_dataset_entry("voc:own_train:/data/own:train:widget,gizmo:sunny")
    assert (e.kind, e.name, e.paths, e.classes, e.domain) == (
        "voc", "own_train", ("/data/own", "train"), CLASSES, "sunny")
    e = parse_dataset_entry("voc:own_train:/data/own:train")
    assert e.classes == tuple(DWD_CLASSES) and e.domain is None
    e = parse_dataset_entry("voc:own_train:/data/own:train::night")  # default classes, a domain
    assert e.classes == tuple(DWD_CLASSES) and e.domain == "night"
    class_file = tmp_path / "classes.txt"
    class_file.write_text("widget\n\ngizmo\n")
    assert parse_dataset_entry(f"voc:x:/d:val:{class_file}").classes == CLASSES
    e = parse_dataset_entry("coco:c_val:/d/a.json:/d/images:fog")
    assert (e.kind, e.paths, e.domain) == ("coco", ("/d/a.json", "/d/images"), "fog")
    e = parse_dataset_entry("sem_seg:s_val:/d/img:/d/lbl")
    assert (e.kind, e.paths, e.domain) == ("sem_seg", ("/d/img", "/d/lbl"), None)


@pytest.mark.parametrize("entry, expected", [
    ("yolo:a:b:c", "unknown kind 'yolo'"),
    ("voc:a:/root", "voc:NAME:ROOT:SPLIT[:CLASSES][:DOMAIN]"),
    ("voc:a:/root:train:x:y:z", "voc:NAME:ROOT:SPLIT[:CLASSES][:DOMAIN]"),
    ("coco:a:/x.json", "coco:NAME:JSON:IMAGES[:DOMAIN]"),
    ("coco::/x.json:/img", "coco:NAME:JSON:IMAGES[:DOMAIN]"),
    ("sem_seg:a:/img:/lbl:d:extra", "sem_seg:NAME:IMAGES:LABELS[:DOMAIN]"),
    ("voc:a:/r:train:car,,bus", "empty class name"),
    ("voc:a:/r:train:car,car", "repeats a name"),
    ("voc:a:/r:train:/no/such/classes.txt", "class file '/no/such/classes.txt' not found"),
])
def test_malformed_entry_names_entry_and_form(entry, expected):
    with pytest.raises(ValueError) as err:
        parse_dataset_entry(entry)
    assert repr(entry) in str(err.value) and expected in str(err.value)


def test_malformed_entry_fails_in_build_cfg_before_any_model():
    with pytest.raises(ValueError, match="coco:NAME:JSON:IMAGES"):
        build_cfg(TINY, ["DATASETS.REGISTER", "['coco:only_name']"])


# ---------------------------------------------------------------- registering
def test_same_contents_idempotent_other_contents_refused(tmp_path):
    root = make_own_voc(str(tmp_path / "own"))
    entry = f"voc:tcli_own_val:{root}:val:widget,gizmo"
    assert register_dataset_entries([entry]) == ["tcli_own_val"]
    assert register_dataset_entries([entry]) == ["tcli_own_val"]  # same contents: no-op
    meta = MetadataCatalog.get("tcli_own_val")
    assert meta.thing_classes == list(CLASSES) and meta.domain == "tcli_own"
    assert [d["image_id"] for d in DatasetCatalog.get("tcli_own_val")] == ["img06", "img07"]
    with pytest.raises(ValueError, match="already registered with different contents"):
        register_dataset_entries([f"voc:tcli_own_val:{root}:train:widget,gizmo"])
    with pytest.raises(ValueError, match="'dwd_night_sunny' is already registered"):
        register_dataset_entries([f"voc:dwd_night_sunny:{root}:val:widget,gizmo"])
    with pytest.raises(ValueError, match="twice with different contents"):
        register_dataset_entries([f"voc:tcli_b:{root}:val", f"voc:tcli_b:{root}:train"])
    assert "tcli_b" not in DatasetCatalog.list()  # refused before anything was registered


def test_coco_and_sem_seg_entries_load(tmp_path):
    Image.new("RGB", (40, 30)).save(tmp_path / "a.jpg")
    gt = {"images": [{"id": 1, "file_name": "a.jpg", "width": 40, "height": 30}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 5, "iscrowd": 0,
                           "bbox": [2.0, 3.0, 10.0, 8.0], "area": 80.0}],
          "categories": [{"id": 5, "name": "gadget"}]}
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    for sub in ("img/city", "lbl/city"):
        os.makedirs(tmp_path / sub)
    Image.new("RGB", (16, 8)).save(tmp_path / "img/city/x.jpg")
    Image.fromarray(np.full((8, 16), 3, np.uint8)).save(tmp_path / "lbl/city/x.png")
    entries = [f"coco:tcli_coco_val:{tmp_path}/gt.json:{tmp_path}:fog",
               f"sem_seg:tcli_seg_val:{tmp_path}/img:{tmp_path}/lbl"]
    register_dataset_entries(entries)
    register_dataset_entries(entries)  # the same contents again: accepted, nothing changes
    with pytest.raises(ValueError, match="tcli_seg_val"):
        register_dataset_entries([f"sem_seg:tcli_seg_val:{tmp_path}/img:{tmp_path}/lbl:night"])
    (record,) = DatasetCatalog.get("tcli_coco_val")
    assert record["annotations"][0]["bbox"] == [2.0, 3.0, 10.0, 8.0]
    assert MetadataCatalog.get("tcli_coco_val").domain == "fog"
    assert MetadataCatalog.get("tcli_coco_val").thing_classes == ["gadget"]
    (pair,) = DatasetCatalog.get("tcli_seg_val")
    assert pair["sem_seg_file_name"] == os.path.join(f"{tmp_path}/lbl", "city", "x.png")
    meta = MetadataCatalog.get("tcli_seg_val")
    assert (meta.evaluator_type, meta.domain) == ("dg_sem_seg", "tcli_seg")
    os.remove(tmp_path / "lbl/city/x.png")
    with pytest.raises(DatasetFormatError, match="no label file"):
        DatasetCatalog.get("tcli_seg_val")


def test_register_module_runs_once_and_conflicts_with_entries(tmp_path):
    root = make_own_voc(str(tmp_path / "own"))
    module = tmp_path / "my_datasets.py"
    module.write_text(
        "from soma_d2.data import register_voc_domain\n"
        "import builtins\n"
        "builtins._tcli_imports = getattr(builtins, '_tcli_imports', 0) + 1\n"
        f"register_voc_domain('tcli_mod_val', {root!r}, 'val', ['widget', 'gizmo'])\n"
    )
    import builtins

    import_registration_modules([str(module)])
    import_registration_modules([str(module)])
    assert builtins._tcli_imports == 1
    assert len(DatasetCatalog.get("tcli_mod_val")) == 2
    # the same contents through an entry agree; other contents are refused
    register_dataset_entries([f"voc:tcli_mod_val:{root}:val:widget,gizmo"])
    with pytest.raises(ValueError, match="tcli_mod_val"):
        register_dataset_entries([f"voc:tcli_mod_val:{root}:val:widget"])
    with pytest.raises(DatasetFormatError, match="--register-module 'nope.py': file not found"):
        import_registration_modules(["nope.py"])


def test_setup_cfg_registers_in_the_process_it_runs(tmp_path):
    """setup_cfg is what every process of `launch` runs: it must do the registration itself."""
    root = make_own_voc(str(tmp_path / "own"))
    args = types.SimpleNamespace(
        config_file=TINY, eval_only=True, register_module=[], num_gpus=1,
        opts=["DATASETS.REGISTER", f"['voc:tcli_setup_val:{root}:val:widget,gizmo']",
              "OUTPUT_DIR", str(tmp_path / "out")])
    cfg = setup_cfg(args)
    assert list(cfg.DATASETS.REGISTER) == [f"voc:tcli_setup_val:{root}:val:widget,gizmo"]
    assert MetadataCatalog.get("tcli_setup_val").thing_classes == list(CLASSES)


def test_class_count_must_match_the_detector(tmp_path):
    root = make_own_voc(str(tmp_path / "own"))
    args = types.SimpleNamespace(
        config_file=TINY, eval_only=True, register_module=[], num_gpus=1,
        opts=["DATASETS.REGISTER", f"['voc:tcli_count_val:{root}:val:widget,gizmo']",
              "DATASETS.TEST", "('tcli_count_val',)", "OUTPUT_DIR", str(tmp_path / "out")])
    with pytest.raises(ValueError, match=r"'tcli_count_val' has 2 classes .*NUM_CLASSES=7"):
        setup_cfg(args)


def test_multi_process_launch_checks_arguments_before_spawning(tmp_path):
    args = types.SimpleNamespace(config_file=TINY, register_module=[str(tmp_path / "nope.py")],
                                 opts=[])
    with pytest.raises(FileNotFoundError, match="--register-module .*nope.py"):
        check_arguments(args)
    cmd = [sys.executable, os.path.join(REPO, "tools", "train_net.py"), "--config-file", TINY,
           "--num-gpus", "2", "DATASETS.REGISTER", "['voc:only_a_name']"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode != 0
    assert "'voc:only_a_name'" in proc.stderr and "voc:NAME:ROOT:SPLIT" in proc.stderr
    assert "check_arguments" in proc.stderr  # failed in the launching process: no worker ran
    assert "ProcessRaisedException" not in proc.stderr


# ---------------------------------------------------------------- end to end
def _train_net(*args: str, timeout: int = 400) -> subprocess.CompletedProcess:
    return helpers.run_train_net(TINY, *args, timeout=timeout)


def test_own_voc_folder_trains_and_evaluates_from_the_command_line(tmp_path):
    root = make_own_voc(str(tmp_path / "parts"))
    (tmp_path / "classes.txt").write_text("widget\ngizmo\n")
    out = str(tmp_path / "run")
    entries = [f"voc:parts_train:{root}:train:widget,gizmo:workshop",
               f"voc:parts_val:{root}:val:{tmp_path}/classes.txt:workshop"]
    _train_net("DATASETS.REGISTER", repr(entries), "DATASETS.TRAIN", "('parts_train',)",
               "DATASETS.TEST", "('parts_val',)", "MODEL.ROI_HEADS.NUM_CLASSES", "2",
               "SOLVER.MAX_ITER", "2", "SOLVER.STEPS", "()", "OUTPUT_DIR", out)
    table = json.load(open(os.path.join(out, "dg_results.json")))
    assert "workshop" in json.dumps(table)
    assert os.path.isfile(os.path.join(out, "model_final.pth"))

    # eval-only, the test set now registered by a user's file in the launched process
    module = tmp_path / "parts_datasets.py"
    module.write_text("from soma_d2.data import register_voc_domain\n"
                      "for split in ('train', 'val'):\n"
                      f"    register_voc_domain('parts_' + split, {root!r}, split, "
                      "('widget', 'gizmo'), domain='workshop')\n")
    out_eval = str(tmp_path / "eval")
    _train_net("--eval-only", "--register-module", str(module), "DATASETS.TRAIN", "('parts_train',)",
               "DATASETS.TEST", "('parts_val',)",
               "MODEL.ROI_HEADS.NUM_CLASSES", "2", "OUTPUT_DIR", out_eval,
               "MODEL.WEIGHTS", os.path.join(out, "model_final.pth"),
               "TEST.DG.RUN_NAME", os.path.basename(out))
    assert json.load(open(os.path.join(out_eval, "dg_results.json"))) == table


def test_entries_and_register_module_reach_both_processes_of_num_gpus_2(tmp_path):
    """`launch` spawns fresh processes: each must register the data sets itself."""
    root = make_own_voc(str(tmp_path / "parts"))
    module = tmp_path / "parts_datasets.py"
    module.write_text("from soma_d2.data import register_voc_domain\n"
                      f"register_voc_domain('parts2_val', {root!r}, 'val', ('widget', 'gizmo'))\n")
    out = str(tmp_path / "ddp")
    with socket.socket() as sock:  # a free port: the default one may be held by another run
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    _train_net("--num-gpus", "2", "--dist-url", f"tcp://127.0.0.1:{port}",
               "--register-module", str(module),
               "DATASETS.REGISTER", f"['voc:parts2_train:{root}:train:widget,gizmo']",
               "DATASETS.TRAIN", "('parts2_train',)", "DATASETS.TEST", "('parts2_val',)",
               "MODEL.ROI_HEADS.NUM_CLASSES", "2", "DATALOADER.NUM_WORKERS", "0",
               "SOLVER.MAX_ITER", "1", "SOLVER.STEPS", "()", "OUTPUT_DIR", out)
    assert "parts2" in json.dumps(json.load(open(os.path.join(out, "dg_results.json"))))
