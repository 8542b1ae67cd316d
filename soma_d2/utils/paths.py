"""Repository-relative file names in configs (the demo's shipped foundation weights).

`make` runs from the repository root, so configs name repository files relative to it; a tool
or test started from another folder still finds them through `resolve_repo_path`.
"""
from __future__ import annotations

import os

__all__ = ["REPO_ROOT", "resolve_repo_path"]

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def resolve_repo_path(path: str, root: str = REPO_ROOT) -> str:
    """`path` as given when it is empty, absolute or exists from here, else `root/path` if that
    exists (else `path` unchanged, so the error names what the config said)."""
    if not path or os.path.isabs(path) or os.path.exists(path):
        return path
    candidate = os.path.join(root, path)
    return candidate if os.path.exists(candidate) else path
