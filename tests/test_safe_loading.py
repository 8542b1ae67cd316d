"""Safe loading: weight files that need arbitrary unpickling are refused before any code in them runs
(as .pth through MODEL.WEIGHTS, SoMACheckpointer, load_dinov2_weights and MODEL.SOMA.PRETRAINED; as
.pkl and .pyth through the checkpointer), with a message saying how to convert them; model-zoo
.pkl files of plain arrays still load; no code path calls torch.load without weights_only=True or
unpickles outside the array-only unpickler."""
from __future__ import annotations

import ast
import os
import pickle

import numpy as np
import pytest
import torch
from detectron2.modeling import build_model
from torch import nn

import soma_d2.modeling  # noqa: F401  (registers the backbone)
from soma_d2.checkpoint import load_dinov2_weights
from soma_d2.checkpoint.checkpointer import SoMACheckpointer
from soma_d2.checkpoint.safe_load import UnsafeCheckpointError, safe_pickle_load
from soma_d2.config import build_cfg

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs", "test", "tiny_soma_det.yaml")


class _Payload:
    """Unpickling this runs `os.system("touch <marker>")`."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _OpenPayload:
    """Unpickling this calls `builtins.open(<marker>, "w")`, creating the marker."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        import builtins

        return builtins.open, (self.marker, "w")


def _evil_state(marker: str, cls=_Payload) -> dict:
    # a real-looking checkpoint with the payload hidden among the tensors
    return {"model": {"backbone.net.cls_token": torch.zeros(1, 1, 64), "x": cls(marker)}}


@pytest.fixture
def marker(tmp_path) -> str:
    return str(tmp_path / "pwned")


def _assert_refused(fn, marker: str) -> None:
    with pytest.raises(UnsafeCheckpointError) as info:
        fn()
    message = str(info.value)
    assert any(name in message for name in ("posix.system", "io.open", "builtins.open"))
    assert "trusted environment" in message  # says how to convert the file
    assert not os.path.exists(marker), "the payload ran"


def test_payload_really_executes_when_unpickled_unrestricted(tmp_path, marker):
    # guards the other tests: the payload is live, so "marker absent" means "refused"
    pickle.loads(pickle.dumps(_evil_state(marker)))
    assert os.path.exists(marker)


@pytest.mark.parametrize("cls", [_Payload, _OpenPayload])
def test_malicious_pth_refused_by_checkpointer_and_dinov2_loader(tmp_path, marker, cls):
    path = str(tmp_path / "evil.pth")
    torch.save(_evil_state(marker, cls), path)
    model = nn.Linear(2, 2)
    _assert_refused(lambda: SoMACheckpointer(model).load(path), marker)
    _assert_refused(lambda: SoMACheckpointer(model).resume_or_load(path, resume=False), marker)
    _assert_refused(lambda: load_dinov2_weights(path), marker)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_malicious_pkl_refused(tmp_path, marker, protocol):
    path = str(tmp_path / "evil.pkl")
    with open(path, "wb") as f:
        pickle.dump({"model": {"w": np.zeros(3), "x": _Payload(marker)}, "__author__": "x"}, f,
                    protocol=protocol)
    _assert_refused(lambda: SoMACheckpointer(nn.Linear(2, 2)).load(path), marker)


def test_malicious_pyth_refused(tmp_path, marker):
    # Detectron2's own DetectionCheckpointer torch.loads .pyth files without weights_only
    path = str(tmp_path / "evil.pyth")
    torch.save({"model_state": _evil_state(marker)["model"]}, path)
    _assert_refused(lambda: SoMACheckpointer(nn.Linear(2, 2)).load(path), marker)


def test_malicious_weights_refused_through_config(tmp_path, marker):
    """MODEL.SOMA.PRETRAINED (read while building the model) and MODEL.WEIGHTS (checked by the
    trainer before data loading, loaded by resume_or_load)."""
    path = str(tmp_path / "evil.pth")
    torch.save(_evil_state(marker), path)
    cfg = build_cfg(TINY, ["MODEL.SOMA.PRETRAINED", path])
    _assert_refused(lambda: build_model(cfg), marker)
    model = build_model(build_cfg(TINY))
    checkpointer = SoMACheckpointer(model, str(tmp_path))
    _assert_refused(lambda: checkpointer.check_weights_file(path), marker)


def test_non_tensor_objects_refused_with_conversion_hint(tmp_path):
    import argparse

    path = str(tmp_path / "legacy.pth")
    torch.save({"model": {"w": torch.ones(2)}, "args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(UnsafeCheckpointError, match=r"argparse.*Namespace[\s\S]*re-save only"):
        SoMACheckpointer(nn.Linear(2, 2)).load(path)


def test_truncated_checkpoint_is_reported_by_name(tmp_path):
    path = tmp_path / "model_0000009.pth"
    torch.save({"model": {"weight": torch.ones(64, 64)}}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"model_0000009\.pth is not a readable torch checkpoint"):
        SoMACheckpointer(nn.Linear(2, 2)).load(str(path))


@pytest.mark.parametrize("protocol", [2, 4, 5])
@pytest.mark.parametrize("layout", ["detectron2", "caffe2"])
def test_model_zoo_pkl_of_plain_arrays_loads(tmp_path, protocol, layout):
    torch.manual_seed(0)
    model = nn.Linear(6, 4)
    arrays = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    if layout == "detectron2":
        data = {"model": arrays, "__author__": "Detectron2 Model Zoo"}
    else:
        data = {"blobs": {**arrays, "weight_momentum": np.zeros(1)}}
    path = str(tmp_path / "zoo.pkl")
    with open(path, "wb") as f:
        pickle.dump(data, f, protocol=protocol)
    fresh = nn.Linear(6, 4)
    nn.init.zeros_(fresh.weight)
    SoMACheckpointer(fresh).load(path)
    assert torch.equal(fresh.weight, model.weight) and torch.equal(fresh.bias, model.bias)


def test_array_unpickler_reads_numpy_scalars_and_dtypes():
    data = {"a": np.arange(6, dtype=np.float16).reshape(2, 3), "s": np.float32(1.5),
            "i": np.int64(7), "t": (1, "x", None, 2.5)}
    for protocol in (2, 4, 5):
        import io

        back = safe_pickle_load(io.BytesIO(pickle.dumps(data, protocol=protocol)))
        assert back["a"].dtype == np.float16 and np.array_equal(back["a"], data["a"])
        assert back["s"] == np.float32(1.5) and back["i"] == 7 and back["t"] == data["t"]


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


def test_no_unrestricted_torch_load_or_unpickling_in_the_code_base():
    roots = [os.path.join(REPO, d) for d in ("soma_d2", "tools", "projects")]
    offenders = []
    for root in filter(os.path.isdir, roots):
        for folder, _, files in os.walk(root):
            for name in files:
                if not name.endswith(".py"):
                    continue
                path = os.path.join(folder, name)
                rel = os.path.relpath(path, REPO)
                tree = ast.parse(open(path).read(), filename=path)
                for node, func in _calls(tree):
                    if func == "torch.load":
                        ok = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant)
                                 and k.value.value is True for k in node.keywords)
                        if not ok:
                            offenders.append(f"{rel}:{node.lineno} {func} without weights_only")
                    if func in ("pickle.load", "pickle.loads", "pickle.Unpickler", "np.load",
                                "numpy.load", "cloudpickle.load", "cloudpickle.loads"):
                        if rel != os.path.join("soma_d2", "checkpoint", "safe_load.py"):
                            offenders.append(f"{rel}:{node.lineno} {func}")
    assert offenders == []
