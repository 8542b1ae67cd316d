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
        "for name in ('soma_d2.modeling', 'soma_d2.data.mappers'):\n"
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
    """Every installed project package named in PROJECT_PACKAGES is imported with the config."""
    _python(
        "import importlib.util, sys\n"
        "import soma_d2.config as c\n"
        "for name in c.PROJECT_PACKAGES:\n"
        "    if importlib.util.find_spec(name) is not None:\n"
        "        assert name in sys.modules, name\n"
    )


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
