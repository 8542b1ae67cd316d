"""The layer rules of soma-d2's import graph, read from the source with `ast` (no import runs).

Each rule is one row: the modules it covers, the imports they must not make, and why. Lazy
imports inside functions count as much as top-level ones: an import that runs later is still an
arrow in the graph. A second group of checks keeps the projects and the core decoupled in the
other direction: the core never names a project, and projects use only public soma_d2 names.
(tests/test_import_graph.py holds the data-package rules.)
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "soma_d2"
PROJECTS = {"soma_codino": ROOT / "projects" / "CoDINO" / "soma_codino",
            "soma_mask2former": ROOT / "projects" / "Mask2Former" / "soma_mask2former"}
PROJECT_TOOLS = sorted((ROOT / "projects").glob("*/tools/*.py"))


def module_name(path: Path) -> str:
    """Dotted module name of a file under soma_d2/ or a project package."""
    for base in (ROOT, *(p.parent for p in PROJECTS.values())):
        try:
            rel = path.relative_to(base)
        except ValueError:
            continue
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        return ".".join(parts)
    raise ValueError(path)


def imports_of(path: Path) -> list[tuple[str, list[str], int]]:
    """(absolute module, imported names, line) of every import in the file, relative ones
    resolved against the file's package; inside functions too."""
    tree = ast.parse(path.read_text())
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, [], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names = [alias.name for alias in node.names]
            found.append((module, names, node.lineno))
            # "from . import x" imports the submodule x
            found += [(f"{module}.{n}", [], node.lineno) for n in names if not node.module]
    return found


def files(where: Path) -> list[Path]:
    return sorted(where.rglob("*.py"))


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


# (files covered, forbidden module prefixes, allowed exceptions, why)
RULES = [
    ("soma_d2/checkpoint", ["soma_d2.modeling", "soma_d2.engine", "soma_d2.config",
                            "soma_d2.data", "soma_d2.evaluation"], [],
     "checkpoints sit below the model: the model imports the loader (backbone.py), never back"),
    ("soma_d2/checkpoint/dinov2", ["detectron2", "timm", "transformers"], [],
     "the DINOv2 loader is plain torch: tools and the ViT use it without Detectron2"),
    ("soma_d2/layers", ["soma_d2.modeling", "soma_d2.checkpoint", "soma_d2.engine",
                        "soma_d2.data", "soma_d2.config", "detectron2"], [],
     "shared building blocks are the lowest layer: torch (and scipy / timm) only"),
    ("soma_d2/compat.py", ["soma_d2"], [],
     "compat wraps Detectron2 / fvcore internals for everyone; it imports nothing of soma_d2"),
    ("soma_d2/soma", ["detectron2", "soma_d2.modeling", "soma_d2.engine", "soma_d2.config"], [],
     "the SoMA core is framework-free (torch only)"),
    ("soma_d2/utils", ["detectron2", "soma_d2.modeling", "soma_d2.engine", "soma_d2.data",
                       "soma_d2.config", "soma_d2.checkpoint"], [],
     "framework-free helpers every layer shares"),
    ("soma_d2", list(PROJECTS), [],
     "the core never imports its projects; they are found through entry points"),
]


def _violations(where: str, forbidden: list[str], allowed: list[str]) -> list[str]:
    target = ROOT / where
    paths = [target] if target.is_file() else files(target)
    out = []
    for path in paths:
        name = module_name(path)
        if any(_within(name, a) for a in allowed):
            continue
        for module, _, line in imports_of(path):
            if any(_within(module, f) for f in forbidden):
                out.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    return out


@pytest.mark.parametrize("where, forbidden, allowed, why", RULES, ids=[r[0] for r in RULES])
def test_layer_rule(where, forbidden, allowed, why):
    assert _violations(where, forbidden, allowed) == [], why


def test_the_rules_catch_what_they_forbid(tmp_path, monkeypatch):
    """The checker itself: a lazy upward import and a relative one are both found."""
    pkg = tmp_path / "soma_d2" / "checkpoint"
    pkg.mkdir(parents=True)
    (pkg / "bad.py").write_text("def f():\n    from ..modeling.vit import DinoVisionTransformer\n")
    (tmp_path / "soma_d2" / "compat.py").write_text("from .engine import rng\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    assert _violations("soma_d2/checkpoint", ["soma_d2.modeling"], []) == [
        "soma_d2/checkpoint/bad.py:2 imports soma_d2.modeling.vit"]
    assert _violations("soma_d2/compat.py", ["soma_d2"], []) == [
        "soma_d2/compat.py:1 imports soma_d2.engine"]


def test_the_core_never_names_a_project():
    """Not even as a string (a PROJECT_PACKAGES tuple, importlib.import_module("soma_codino"))."""
    hits = [f"{p.relative_to(ROOT)}: {name}" for p in files(CORE) for name in PROJECTS
            if name in p.read_text()]
    assert hits == []


def _project_sources() -> list[Path]:
    return [p for d in PROJECTS.values() for p in files(d)] + PROJECT_TOOLS


def test_projects_use_only_public_soma_d2_names():
    """No `from soma_d2.x import _private`, and no call of a private member such as the ViT's
    `_encode` (the shared raw-tap backbone is what the heads use)."""
    bad = []
    for path in _project_sources():
        for module, names, line in imports_of(path):
            if _within(module, "soma_d2") and (
                    any(n.startswith("_") for n in names)
                    or any(part.startswith("_") for part in module.split("."))):
                bad.append(f"{path.relative_to(ROOT)}:{line} from {module} import {names}")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in ("_encode", "_run_block"):
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno} uses .{node.attr}")
    assert bad == []


def test_projects_do_not_import_each_other():
    bad = [f"{p.relative_to(ROOT)}:{line} imports {module}"
           for name, where in PROJECTS.items() for p in files(where)
           for module, _, line in imports_of(p)
           for other in PROJECTS if other != name and _within(module, other)]
    assert bad == []


def test_one_definition_of_each_shared_piece():
    """The pieces soma_d2.layers holds are defined there only: no project redefines them."""
    shared = {"sine_position_encoding", "box_sine_embedding", "inverse_sigmoid",
              "hungarian_match", "DeformableEncoderLayer", "encoder_reference_points",
              "RawTapBackbone", "ViTTapsBackbone"}
    bad = []
    for path in _project_sources():
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name in shared:
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno} defines {node.name}")
    assert bad == []
