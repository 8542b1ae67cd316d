"""Small framework-free helpers every layer of soma-d2 shares (torch and the standard library only)."""
from .atomic_io import atomic_torch_save, atomic_write, atomic_write_text
from .parallel import unwrap_model
from .paths import REPO_ROOT, resolve_repo_path

__all__ = ["REPO_ROOT", "atomic_torch_save", "atomic_write", "atomic_write_text",
           "resolve_repo_path", "unwrap_model"]
