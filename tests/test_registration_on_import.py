"""Importing `soma_d2.config` alone makes every component buildable; `soma_d2.soma` needs torch only.

Both run in fresh interpreters: in this test process other tests have imported everything already.
"""
from __future__ import annotations

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _python(code: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_build_model_after_importing_only_soma_d2_config():
    proc = _python(
        "import sys\n"
        "from detectron2.config import get_cfg\n"
        "from detectron2.modeling import build_model\n"
        "from soma_d2.config import add_soma_config\n"
        "for name in ('soma_d2.modeling', 'soma_d2.data.mapper_registry'):\n"
        "    assert name in sys.modules, name\n"
        "for config in ('configs/test/tiny_soma_det.yaml', 'configs/test/tiny_soma_semseg.yaml'):\n"
        "    cfg = add_soma_config(get_cfg())\n"
        "    cfg.merge_from_file(config)\n"
        "    model = build_model(cfg)\n"
        "    print(type(model).__name__, type(model.backbone).__name__)\n"
    )
    lines = proc.stdout.split("\n")
    assert "GeneralizedRCNN MultiLevelFeaturePyramid" in lines[0], proc.stdout
    assert lines[1].startswith("SoMASemanticSegmentor"), proc.stdout


def test_project_packages_register_on_import_of_soma_d2_config():
    """Both paper heads are found through the ``soma_d2.projects`` entry points (setup.py), not by
    name, and importing soma_d2.config imports them and adds their keys."""
    proc = _python(
        "import importlib.metadata, sys\n"
        "from detectron2.config import get_cfg\n"
        "from detectron2.modeling import META_ARCH_REGISTRY\n"
        "import soma_d2.config as c\n"
        "eps = importlib.metadata.entry_points(group='soma_d2.projects')\n"
        "print(sorted((e.name, e.value) for e in eps))\n"
        "print(sorted(p.name for p in c.discover_projects()))\n"
        "print([m in sys.modules for m in ('soma_codino', 'soma_mask2former')])\n"
        "print([n in META_ARCH_REGISTRY for n in ('SoMACoDINO', 'SoMAMask2Former')])\n"
        "cfg = c.add_soma_config(get_cfg())\n"
        "print('CODINO' in cfg.MODEL, 'MASK2FORMER' in cfg.MODEL)\n"
    )
    lines = proc.stdout.splitlines()
    assert lines[0] == ("[('codino', 'soma_codino:PROJECT'), "
                        "('mask2former', 'soma_mask2former:PROJECT')]"), proc.stdout
    assert lines[1:] == ["['codino', 'mask2former']", "[True, True]", "[True, True]",
                         "True True"], proc.stdout


def test_a_broken_project_fails_naming_it(tmp_path):
    """A declared project whose package does not import stops config building with an error that
    names the project, its entry point and the cause (not a bare ImportError deep inside)."""
    dist = tmp_path / "broken_proj-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-proj\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[soma_d2.projects]\nbroken = no_such_package:PROJECT\n")
    proc = subprocess.run(
        [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(tmp_path)!r}); "
         "import soma_d2.config"], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("soma_d2.project_registry.ProjectLoadError: soma-d2 project 'broken'"), \
        proc.stderr[-2000:]
    assert "'no_such_package:PROJECT'" in last and "broken-proj" in last
    assert "ModuleNotFoundError: No module named 'no_such_package'" in last


def test_soma_core_imports_without_detectron2():
    proc = _python(
        "import sys\n"
        "sys.modules['detectron2'] = None  # any import of detectron2 now raises ImportError\n"
        "import torch\n"
        "from soma_d2.soma import SoMAConfig, inject_soma, merge_soma\n"
        "block = torch.nn.Sequential()\n"
        "block.add_module('fc1', torch.nn.Linear(8, 8))\n"
        "net = torch.nn.Module()\n"
        "net.blocks = torch.nn.ModuleList([block])\n"
        "inject_soma(net, SoMAConfig(rank=2, alpha=2.0, target_modules=['fc1']))\n"
        "mlp = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))\n"
        "inject_soma(mlp, SoMAConfig(rank=2, target_modules=['0', '2'], block_pattern=None))\n"
        "assert type(net.blocks[0].fc1).__name__ == 'SoMALinear'\n"
        "print(sorted(m for m, v in sys.modules.items() if m.startswith('detectron2') and v))\n"
    )
    assert proc.stdout.strip() == "[]"


def test_build_path_imports_no_scipy_optimize_and_leaves_gc_alone():
    # the build path does not import scipy.optimize (the Hungarian matcher imports it on its
    # first call), and importing the library leaves the caller's garbage collector alone
    proc = _python(
        "import gc, sys\n"
        "import soma_d2.config\n"
        "from soma_d2.modeling.backbone import build_soma_vit\n"
        "print('scipy.optimize' in sys.modules, gc.get_freeze_count() == 0)\n"
        "from soma_d2.layers import hungarian_match\n"
        "import torch\n"
        "rows, cols = hungarian_match(torch.tensor([[3.0, 1.0], [1.0, 3.0]]))\n"
        "print(rows.tolist(), cols.tolist(), 'scipy.optimize' in sys.modules)\n"
    )
    assert proc.stdout.split("\n")[:2] == ["False True", "[0, 1] [1, 0] True"]


def test_train_net_freezes_start_up_objects_after_the_config_not_on_import():
    # tools/train_net.py moves its start-up objects out of the collector's reach (gc.freeze) once
    # the config is set up and before the model is built: not on import, not before setup_cfg
    proc = _python(
        "import argparse, gc, importlib.util, sys\n"
        "spec = importlib.util.spec_from_file_location('train_net', 'tools/train_net.py')\n"
        "tn = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(tn)\n"
        "seen = [gc.get_freeze_count()]\n"
        "def setup_cfg(args):\n"
        "    seen.append(gc.get_freeze_count())\n"
        "    return 'cfg'\n"
        "def train(cfg, resume=False):\n"
        "    seen.append(gc.get_freeze_count())\n"
        "    return cfg\n"
        "tn.setup_cfg, tn.train, tn.shutdown_distributed = setup_cfg, train, lambda **k: None\n"
        "args = argparse.Namespace(eval_only=False, resume=False)\n"
        "print(tn.main(args), [n > 0 for n in seen])\n"
    )
    assert proc.stdout.strip().splitlines()[-1] == "cfg [False, False, True]", proc.stdout
