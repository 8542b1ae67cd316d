"""The package's layering, read from the source with `ast` (nothing is imported): which packages
may import which, and that private Detectron2 / torch data-loader attributes are reached only
through `soma_d2/compat.py`.

Every `import` counts, also those inside functions (a lazy import still couples the layers; only
`if TYPE_CHECKING:` blocks are left out), and importing `a.b.c` also runs `a` and `a.b`. A rule
is checked against the transitive closure: `data -> evaluation -> modeling` breaks "data must not
import modeling" as much as a direct import does. Add a layer rule by appending a `LayerRule` to
`LAYER_RULES`; the failure message prints the import chain that breaks it.
"""
from __future__ import annotations

import ast
import importlib.util
import os
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass(frozen=True)
class LayerRule:
    """Modules under `source` must not import (directly or through other modules of the
    repository) any module under a `forbidden` prefix; `why` is printed when one does."""

    source: str
    forbidden: tuple[str, ...]
    why: str


LAYER_RULES = [
    LayerRule("soma_d2.data", ("soma_d2.modeling", "detectron2.engine", "detectron2.modeling"),
              "data registration and mappers know no model: the engine picks the model's default "
              "mapper (modeling.default_mapper_name), data only holds the registry"),
    LayerRule("soma_d2.soma", ("detectron2", "fvcore", "soma_d2.modeling", "soma_d2.engine",
                               "soma_d2.data", "soma_d2.checkpoint", "soma_d2.compat"),
              "soma/ is the framework-free PEFT core: torch only, usable without Detectron2"),
]

# packages whose modules are read: the library and the heads' project packages
PACKAGES = {
    "soma_d2": os.path.join(REPO, "soma_d2"),
    "soma_codino": os.path.join(REPO, "projects", "CoDINO", "soma_codino"),
    "soma_mask2former": os.path.join(REPO, "projects", "Mask2Former", "soma_mask2former"),
}
# where private loader attributes must not be walked (compat.py is the one allowed place)
SCANNED_FOR_PRIVATE = ["soma_d2", "projects", "tools", "benchmarks"]
COMPAT = os.path.join(REPO, "soma_d2", "compat.py")


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _walk_imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            yield from (n for child in node.orelse for n in _walk_imports(child))
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        yield from _walk_imports(node)


def _with_parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:k]) for k in range(1, len(parts) + 1)]


class ImportGraph:
    """Modules of some packages (read from their folders) and the imports between them."""

    def __init__(self, packages: dict[str, str]):
        self.modules: dict[str, str] = {}
        for package, folder in packages.items():
            for dirpath, dirnames, filenames in os.walk(folder):
                dirnames[:] = [d for d in dirnames if d != "__pycache__"]
                rel = os.path.relpath(dirpath, folder)
                parts = [package] + ([] if rel == "." else rel.split(os.sep))
                for name in filenames:
                    if name.endswith(".py"):
                        stem = name[:-3]
                        dotted = ".".join(parts if stem == "__init__" else [*parts, stem])
                        self.modules[dotted] = os.path.join(dirpath, name)
        self._imports: dict[str, frozenset[str]] = {}

    def under(self, prefix: str) -> list[str]:
        return sorted(m for m in self.modules if m == prefix or m.startswith(prefix + "."))

    def imports_of(self, module: str) -> frozenset[str]:
        """Every module `module`'s code imports (absolute names, with their parent packages)."""
        if module in self._imports:
            return self._imports[module]
        path = self.modules[module]
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), filename=path)
        package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
        found: set[str] = set(_with_parents(package))  # importing a module runs its packages
        for node in _walk_imports(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:
                    base = package.split(".")
                    base = base[:len(base) - node.level + 1]
                    prefix = ".".join(base + ([node.module] if node.module else []))
                else:
                    prefix = node.module or ""
                # `from pkg import name`: the submodule pkg.name when there is one, else pkg
                targets = [f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in self.modules
                           else prefix for a in node.names]
            for target in targets:
                found.update(_with_parents(target))
        found.discard(module)
        self._imports[module] = frozenset(found)
        return self._imports[module]

    def chain(self, source: str, forbidden: tuple[str, ...]) -> list[str] | None:
        """The shortest import chain from `source` to a module under a `forbidden` prefix."""
        def hit(name: str) -> bool:
            return any(name == f or name.startswith(f + ".") for f in forbidden)

        parents: dict[str, str | None] = {source: None}
        queue = [source]
        while queue:
            current = queue.pop(0)
            for target in sorted(self.imports_of(current)):
                if target in parents:
                    continue
                parents[target] = current
                if hit(target):
                    chain = [target]
                    while parents[chain[-1]] is not None:
                        chain.append(parents[chain[-1]])
                    return chain[::-1]
                if target in self.modules:  # the repository's modules, not third-party code
                    queue.append(target)
        return None


@cache
def repository_graph() -> ImportGraph:
    return ImportGraph(PACKAGES)


@pytest.mark.parametrize("rule", LAYER_RULES, ids=lambda r: f"{r.source}-not-{r.forbidden[0]}")
def test_layer_rules_hold(rule: LayerRule):
    graph = repository_graph()
    sources = graph.under(rule.source)
    assert sources, f"no module under {rule.source}: the rule checks nothing"
    broken = [chain for m in sources if (chain := graph.chain(m, rule.forbidden))]
    assert not broken, f"{rule.source} must not import {rule.forbidden} ({rule.why}):\n" + \
        "\n".join(" -> ".join(chain) for chain in broken)


def test_the_graph_reader_sees_lazy_relative_and_transitive_imports(tmp_path):
    """The reader on a made-up package: the rules must see what they claim to see."""
    files = {
        "__init__.py": "",
        "data/__init__.py": "from . import mapper\n",
        "data/mapper.py": ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                           "    from ..modeling import vit\n"
                           "def build():\n    from ..helpers import util\n"),
        "data/clean.py": "import os\n",
        "data/lazy.py": "def f():\n    from .mapper import build\n",
        "helpers.py": "from .util import *\n",
        "util.py": "import fake.modeling.vit\n",
        "modeling/__init__.py": "",
        "modeling/vit.py": "from ..data import clean\n",
    }
    for rel, text in files.items():
        (tmp_path / "fake" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "fake" / rel).write_text(text)
    graph = ImportGraph({"fake": str(tmp_path / "fake")})
    # TYPE_CHECKING skipped; a lazy relative import counts, with its parent package
    assert graph.imports_of("fake.data.mapper") == {"typing", "fake", "fake.data",
                                                     "fake.helpers"}
    assert graph.chain("fake.data.lazy", ("fake.modeling",)) == [
        "fake.data.lazy", "fake.data.mapper", "fake.helpers", "fake.util", "fake.modeling"]
    # importing fake.data.clean runs fake/data/__init__.py, which imports the mapper
    assert graph.chain("fake.data.clean", ("fake.modeling",))[:3] == [
        "fake.data.clean", "fake.data", "fake.data.mapper"]
    assert graph.chain("fake.modeling.vit", ("os",)) == ["fake.modeling.vit", "fake.data.clean",
                                                         "os"]
    assert graph.chain("fake.helpers", ("fake.data.lazy",)) is None  # nothing imports it


# ---- private loader attributes ------------------------------------------------------------------

def _source_root(top: str) -> str:
    spec = importlib.util.find_spec(top)  # a top-level name: located, not imported
    assert spec is not None and spec.submodule_search_locations, top
    return list(spec.submodule_search_locations)[0]


def _private_self_attributes(files: list[str]) -> set[str]:
    """`self._name` attributes the classes in `files` use: their private state and methods."""
    names = set()
    for path in files:
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), filename=path)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_")
                    and not node.attr.startswith("__") and isinstance(node.value, ast.Name)
                    and node.value.id == "self"):
                names.add(node.attr)
    return names


@cache
def private_loader_attributes() -> frozenset[str]:
    """Private attributes of Detectron2's data loading (loaders, samplers, dataset wrappers) and
    of torch's DataLoader, read from their installed sources."""
    d2 = os.path.join(_source_root("detectron2"), "data")
    files = [os.path.join(d2, "common.py"), os.path.join(d2, "build.py")]
    samplers = os.path.join(d2, "samplers")
    files += [os.path.join(samplers, f) for f in os.listdir(samplers) if f.endswith(".py")]
    tdata = os.path.join(_source_root("torch"), "utils", "data")
    files += [os.path.join(tdata, f) for f in ("dataloader.py", "sampler.py", "dataset.py")]
    return frozenset(_private_self_attributes(files))


# walking the wrappers Detectron2 puts around a DataLoader: loader.dataset.dataset, ...
STRUCTURE = {"dataset", "sampler", "batch_sampler"}


def private_walks(path: str, private: frozenset[str]) -> list[str]:
    """`file:line: expression` for each private loader attribute read on another object than
    `self`/`cls`, and each two-level walk through the loader's wrappers."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), filename=path)
    hits = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        owner = node.value
        own = isinstance(owner, ast.Name) and owner.id in ("self", "cls")
        super_call = (isinstance(owner, ast.Call) and isinstance(owner.func, ast.Name)
                      and owner.func.id == "super")
        if node.attr in private and not own and not super_call:
            hits.append(f"{path}:{node.lineno}: {ast.unparse(node)}")
        elif (node.attr in STRUCTURE | {"generator"} and isinstance(owner, ast.Attribute)
              and owner.attr in STRUCTURE):
            hits.append(f"{path}:{node.lineno}: {ast.unparse(node)}")
    return hits


def _python_files(folder: str) -> Iterator[str]:
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if d not in ("__pycache__", "tests")]
        yield from (os.path.join(dirpath, f) for f in filenames if f.endswith(".py"))


def test_private_loader_attributes_are_reached_only_through_compat():
    private = private_loader_attributes()
    assert {"_dataset", "_seed", "_index_sampler"} <= private  # the reader found them
    hits = [hit for top in SCANNED_FOR_PRIVATE for path in _python_files(os.path.join(REPO, top))
            if path != COMPAT for hit in private_walks(path, private)]
    assert not hits, ("private Detectron2/torch loader attributes outside soma_d2/compat.py "
                      "(add an accessor there, tested in tests/test_compat.py):\n" + "\n".join(hits))
    assert private_walks(COMPAT, private)  # compat.py does walk them: the scan would see it


def test_private_walk_scan_flags_what_it_should(tmp_path):
    path = tmp_path / "walker.py"
    path.write_text(
        "def f(loader, sampler):\n"
        "    a = loader.dataset.dataset\n"
        "    b = sampler._seed\n"
        "    c = loader.dataset\n"
        "    return self._seed, super()._seed, a, b, c\n")
    hits = private_walks(str(path), frozenset({"_seed"}))
    assert [h.split(": ", 1)[1] for h in hits] == ["loader.dataset.dataset", "sampler._seed"]
