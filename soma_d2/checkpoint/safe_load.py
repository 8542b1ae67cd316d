"""Loading weight files without executing code from them, and saving them without tearing.

`torch.load(weights_only=True)` covers `.pth`; Detectron2 model-zoo `.pkl` files are plain pickles
of numpy arrays, so they go through an unpickler that only knows numpy's array constructors and
plain containers. Anything else is refused with a message instead of being executed. (Saving
without tearing lives in `soma_d2.utils.atomic_io`.)
"""
from __future__ import annotations

import errno
import pickle
from typing import IO, Any

import torch

__all__ = [
    "UnsafeCheckpointError",
    "safe_pickle_load",
    "torch_load_weights",
]


class UnsafeCheckpointError(ValueError):
    """A weight file needs arbitrary pickled objects, which soma-d2 refuses to unpickle."""


# numpy's own reconstructors (arrays, scalars, dtypes; protocol 5 uses _frombuffer) and the
# latin-1 bytes helper that protocol-2 pickles written by Python 3 use for array data
_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"),
    ("_codecs", "encode"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
}


class _ArrayOnlyUnpickler(pickle.Unpickler):
    def __init__(self, file: IO[bytes], filename: str):
        super().__init__(file, encoding="latin1")
        self.filename = filename

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise UnsafeCheckpointError(
            f"{self.filename} asks to unpickle {module}.{name}; soma-d2 only loads pickles of plain "
            "numpy arrays and containers. Convert the file to a state dict of arrays/tensors in a "
            "trusted environment (e.g. torch.save(state_dict) there) and load that instead."
        )


def safe_pickle_load(file: IO[bytes], filename: str = "<pickle>") -> Any:
    """Unpickle `file`, allowing only numpy arrays, numbers, strings and containers."""
    return _ArrayOnlyUnpickler(file, filename).load()


def torch_load_weights(
    path: str, map_location: str | torch.device = "cpu", mmap: bool = False
) -> Any:
    """`torch.load(path, weights_only=True)` with an error that says how to convert a refused file.

    `mmap=True` maps the tensors instead of reading them (cheap when only names and shapes are
    needed); files in torch's legacy (non-zip) format are then read normally.
    """
    try:
        try:
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
        except RuntimeError as e:
            if not mmap or "mmap" not in str(e):
                raise
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise UnsafeCheckpointError(
            f"Could not load {path} with torch.load(weights_only=True): {e}. soma-d2 never "
            "unpickles arbitrary objects; in a trusted environment, load it and re-save only the "
            "tensors (torch.save({'model': state_dict}, path)), then use the new file."
        ) from e
    except (RuntimeError, EOFError, OSError) as e:
        if isinstance(e, OSError) and e.errno not in (None, errno.EINVAL):
            raise  # missing file, permissions, I/O: the OSError already names the problem
        raise ValueError(
            f"{path} is not a readable torch checkpoint (truncated or corrupt?): {e}"
        ) from e
