"""A DetectionCheckpointer that refuses weights which would silently break a SoMA model.

Three mistakes look harmless and are not: loading a raw DINOv2 or DINOv3 file through `MODEL.WEIGHTS` (the
decomposition already happened, so the full W would overwrite the residual and the model would
compute W + s*B*A), loading plain (merged or un-decomposed) linear weights into a SoMA layer, and
loading factors of another rank (Detectron2 would skip them with a warning and train from the
fresh decomposition). All are detected from key names and shapes before anything is copied, and
refused with what to do. Files load without arbitrary unpickling (`safe_load`), saves are atomic,
and a model holding NaN/inf weights is never saved over the last good checkpoint.
"""
from __future__ import annotations

import contextlib
import glob
import logging
import os
import re
import shutil
from typing import Any

import torch
from detectron2.checkpoint import DetectionCheckpointer

from ..compat import IncompatibleKeys
from ..soma import SoMALinear
from ..utils import atomic_torch_save, atomic_write_text, unwrap_model
from .adapter import is_adapter_checkpoint, load_adapter
from .safe_load import safe_pickle_load, torch_load_weights

logger = logging.getLogger(__name__)

__all__ = [
    "SoMACheckpointer",
    "check_free_space",
    "check_soma_compatibility",
    "estimate_checkpoint_bytes",
    "non_finite_tensors",
]

_ADAPTER_KEY = "__soma_adapter__"
_RAW_DINOV2 = re.compile(
    r"^(blocks\.\d+\.attn\.qkv\.weight|encoder\.layer\.\d+\.|embeddings\.patch_embeddings\.|"
    r"dinov2\.embeddings\.|patch_embed\.proj\.weight$)"
)
# what only DINOv3 files hold: storage tokens, RoPE periods, SwiGLU linears, transformers' layer.N
_RAW_DINOV3 = re.compile(
    r"^(storage_tokens$|rope_embed\.|(?:model\.)?layer\.\d+\.|blocks\.\d+\.mlp\.w(?:12|1|2|3)\.)"
)


def check_soma_compatibility(model: torch.nn.Module, state: dict[str, Any], source: str) -> None:
    """Raise ValueError when `state` cannot be loaded into `model` without corrupting SoMA layers."""
    keys = set(state)
    if keys and not any(k.startswith("backbone.") for k in keys):
        v3 = sorted(k for k in keys if _RAW_DINOV3.match(k))
        v2 = sorted(k for k in keys if _RAW_DINOV2.match(k))
        if v3 or v2:
            family, extra = ("DINOv3", " MODEL.VIT.FAMILY dinov3") if v3 else ("DINOv2", "")
            raise ValueError(
                f"{source} is a raw {family} checkpoint (keys like {(v3 or v2)[:2]}). SoMA "
                "decomposes the pretrained weights when the model is built, so foundation weights "
                "belong in MODEL.SOMA.PRETRAINED (loaded before the SVD); MODEL.WEIGHTS is for "
                "full soma-d2 checkpoints. Re-run with MODEL.SOMA.PRETRAINED <file> "
                f"MODEL.WEIGHTS ''{extra}."
            )
    model = unwrap_model(model)
    soma_layers = [n for n, m in model.named_modules() if isinstance(m, SoMALinear)]
    plain = [n for n in soma_layers if f"{n}.weight" in keys and f"{n}.A" not in keys]
    if plain:
        raise ValueError(
            f"{source} holds plain linear weights for {len(plain)} SoMA-adapted layers (e.g. "
            f"{plain[0]}.weight without {plain[0]}.A). Loading them would overwrite the frozen "
            "residual W - s*B*A with a full W. If this is a merged checkpoint (tools/"
            "merge_adapter.py), load it with MODEL.SOMA.MODE frozen; if it holds foundation "
            "weights, pass it as MODEL.SOMA.PRETRAINED instead."
        )
    for name in soma_layers:
        factor = state.get(f"{name}.A")
        if factor is None or not hasattr(factor, "shape") or len(factor.shape) != 2:
            continue
        module = model.get_submodule(name)
        if tuple(factor.shape) != tuple(module.A.shape):
            raise ValueError(
                f"{source} holds SoMA factors of rank {factor.shape[0]} for {name} (A "
                f"{tuple(factor.shape)}), but the model was built with rank {module.rank} (A "
                f"{tuple(module.A.shape)}). Set MODEL.SOMA.RANK {factor.shape[0]} (and the "
                "MODEL.SOMA / MODEL.VIT settings the checkpoint was trained with)."
            )
    linear_names = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    adapted = [k[: -len(".A")] for k in keys if k.endswith(".A") and k[: -len(".A")] in linear_names]
    if adapted:
        raise ValueError(
            f"{source} holds SoMA factors for {len(adapted)} layers that are plain nn.Linear in "
            f"this model (e.g. {sorted(adapted)[0]}). Build the model with the MODEL.SOMA.MODE the "
            "checkpoint was trained with, or merge it first with tools/merge_adapter.py."
        )


def non_finite_tensors(state: dict[str, Any]) -> list[str]:
    """Names of floating-point tensors in `state` holding NaN or inf."""
    return [
        k for k, v in state.items()
        if isinstance(v, torch.Tensor) and v.is_floating_point() and not torch.isfinite(v).all()
    ]


def estimate_checkpoint_bytes(model: torch.nn.Module) -> int:
    """Size of one training checkpoint: the state dict plus AdamW's two moments per trainable."""
    state = sum(t.numel() * t.element_size() for t in unwrap_model(model).state_dict().values())
    moments = sum(2 * p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return state + moments


def check_free_space(directory: str, needed_bytes: int) -> None:
    """Fail before training when `directory` cannot hold one more checkpoint of `needed_bytes`."""
    free = shutil.disk_usage(directory).free
    if free < needed_bytes:
        raise RuntimeError(
            f"OUTPUT_DIR={directory!r} has {free / 2**20:.1f} MiB free, but one checkpoint needs "
            f"about {needed_bytes / 2**20:.1f} MiB; free space or choose another OUTPUT_DIR "
            "before training."
        )


class SoMACheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer + SoMA compatibility checks; files load without arbitrary unpickling."""

    def _load_file(self, filename: str) -> dict[str, Any]:
        if filename.endswith(".pkl"):
            with open(filename, "rb") as f:
                data = safe_pickle_load(f, filename)
            if not isinstance(data, dict):
                raise ValueError(
                    f"{filename}: expected a pickled dict of arrays (Detectron2/Caffe2 model zoo "
                    f"format), found {type(data).__name__}"
                )
            if "model" in data and "__author__" in data:
                return data
            data = data.get("blobs", data)
            data = {k: v for k, v in data.items() if not k.endswith("_momentum")}
            return {"model": data, "__author__": "Caffe2", "matching_heuristics": True}
        if filename.endswith(".pyth"):  # pycls; Detectron2 would torch.load it unrestricted
            data = torch_load_weights(filename)
            if not isinstance(data, dict) or "model_state" not in data:
                raise ValueError(f"{filename}: a .pyth (pycls) checkpoint must hold 'model_state'")
            state = {k: v for k, v in data["model_state"].items()
                     if not k.endswith("num_batches_tracked")}
            return {"model": state, "__author__": "pycls", "matching_heuristics": True}
        return super()._load_file(filename)

    def check_weights_file(self, path: str) -> None:
        """Refuse an incompatible or unsafe local weight file before any data is loaded.

        Reads only names and shapes (memory-mapped); URLs and adapter files are left to `load`.
        """
        if not path or not os.path.isfile(path):
            return
        self.path = path
        if path.endswith(".pkl"):
            state = self._load_file(path)["model"]
        else:
            loaded = torch_load_weights(path, mmap=True)
            if is_adapter_checkpoint(loaded) or not isinstance(loaded, dict):
                return
            state = loaded.get("model", loaded)
        if isinstance(state, dict):
            check_soma_compatibility(self.model, state, f"MODEL.WEIGHTS={path!r}")

    def _torch_load(self, f: str) -> dict[str, Any]:
        loaded = torch_load_weights(f)
        if is_adapter_checkpoint(loaded):  # adapter-only file: residuals come from the builder
            return {"model": {}, _ADAPTER_KEY: loaded}
        return loaded

    def save(self, name: str, **kwargs: Any) -> None:
        """Like Detectron2's save, but atomic: a crash mid-save keeps the previous checkpoint."""
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        bad = non_finite_tensors(data["model"])
        if bad:
            raise FloatingPointError(
                f"refusing to save checkpoint {name!r}: {len(bad)} model tensors hold NaN/inf "
                f"(e.g. {bad[:3]}); the training diverged. The last good checkpoint stays in "
                f"{self.save_dir} (see last_checkpoint)."
            )
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self._remove_stale_temp_files()
        self.logger.info("Saving checkpoint to %s", save_file)
        atomic_torch_save(data, save_file)
        self.tag_last_checkpoint(basename)

    def _remove_stale_temp_files(self) -> None:
        # only the main process saves, one file at a time: a temp file that exists before a save
        # was left by a process killed mid-save, and may be as large as a checkpoint
        for path in glob.glob(os.path.join(self.save_dir, ".*.pth.*.tmp")) + glob.glob(
            os.path.join(self.save_dir, ".last_checkpoint.*.tmp")
        ):
            self.logger.info("Removing %s, left by an interrupted save", path)
            with contextlib.suppress(OSError):
                os.remove(path)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        atomic_write_text(last_filename_basename, os.path.join(self.save_dir, "last_checkpoint"))

    def _load_model(self, checkpoint: dict[str, Any]) -> Any:
        if _ADAPTER_KEY in checkpoint:
            load_adapter(self.model, checkpoint.pop(_ADAPTER_KEY))
            return IncompatibleKeys(missing_keys=[], unexpected_keys=[], incorrect_shapes=[])
        check_soma_compatibility(self.model, checkpoint["model"], f"checkpoint {self.path!r}")
        return super()._load_model(checkpoint)

    def load(self, path: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        self.path = path
        return super().load(path, *args, **kwargs)
