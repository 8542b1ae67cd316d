"""Small framework-free helpers every layer of soma-d2 shares (torch and the standard library only)."""
from .atomic_io import atomic_torch_save, atomic_write, atomic_write_text
from .parallel import unwrap_model

__all__ = ["atomic_torch_save", "atomic_write", "atomic_write_text", "unwrap_model"]
