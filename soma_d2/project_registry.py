"""How soma-d2 finds the paper's heads (projects/CoDINO, projects/Mask2Former) and any other project.

A project is a separate package that Detectron2's registries learn about on import (its
meta-architecture, heads, mappers). The core never names its projects: each one declares itself in
its distribution's metadata, under the entry-point group ``soma_d2.projects``, pointing at a
`ProjectHooks` object (a line ``"<name> = <package>:PROJECT"``; setup.py declares the two heads). `discover_projects`
loads every such entry point, which imports the package and so registers its components;
`soma_d2.config` then calls each project's `add_config` when it builds a config and its
`validate_config` after the YAML file and overrides are merged. Entry points exist once the
distribution is installed (``pip install -e .``); a project whose entry point is declared but whose
package does not import fails with `ProjectLoadError` naming the project and the cause.
"""
from __future__ import annotations

import importlib.metadata
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

__all__ = ["ENTRY_POINT_GROUP", "ProjectHooks", "ProjectLoadError", "discover_projects"]

ENTRY_POINT_GROUP = "soma_d2.projects"


@dataclass(frozen=True)
class ProjectHooks:
    """What a project hands soma-d2: `add_config(cfg)` adds its keys to a config (e.g.
    MODEL.CODINO); `validate_config(cfg)`, when given, checks them once the config is merged and
    raises a ValueError naming the key at fault (it returns early for other meta-architectures)."""

    name: str
    add_config: Callable[..., object]
    validate_config: Callable[..., None] | None = None


class ProjectLoadError(ImportError):
    """A project declared under the ``soma_d2.projects`` entry points failed to import."""


@lru_cache(maxsize=1)
def discover_projects() -> tuple[ProjectHooks, ...]:
    """Load every ``soma_d2.projects`` entry point, sorted by name (so config keys are added in a
    fixed order); cached: the installed distributions do not change within a process."""
    found = []
    for ep in sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        dist = getattr(ep.dist, "name", "?")
        try:
            hooks = ep.load()
        except Exception as e:  # any failure of the plugin's import is reported the same way
            raise ProjectLoadError(
                f"soma-d2 project {ep.name!r} (entry point {ep.value!r} of distribution {dist!r}, "
                f"group {ENTRY_POINT_GROUP!r}) failed to import: {type(e).__name__}: {e}. Repair "
                "or reinstall it (pip install -e <repository>), or uninstall the distribution"
            ) from e
        if not isinstance(hooks, ProjectHooks):
            raise ProjectLoadError(
                f"soma-d2 project {ep.name!r}: entry point {ep.value!r} of distribution {dist!r} "
                f"is a {type(hooks).__name__}, not a soma_d2.project_registry.ProjectHooks"
            )
        found.append(hooks)
    return tuple(found)
