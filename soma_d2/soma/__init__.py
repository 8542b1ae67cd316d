"""Framework-free SoMA core (torch only): config, adapter layer, batched SVD, injection, state.

SoMA adapts a frozen pretrained linear layer through the r minor singular components of its
weight: the factors start from those components and the frozen residual holds the rest, so the
model is unchanged at step 0 and training moves only the least-used directions of each layer.
"""
from .cache import DecompositionCache
from .config import SoMAConfig
from .inject import (
    SoMALayerInfo,
    SoMAReport,
    apply_freeze_policy,
    find_soma_config,
    inject_soma,
    merge_soma,
)
from .layer import SoMALinear
from .state import adapter_state_dict, load_adapter_state_dict
from .svd import Triplets, decompose_weights

__all__ = [
    "DecompositionCache",
    "SoMAConfig",
    "SoMALayerInfo",
    "SoMALinear",
    "SoMAReport",
    "Triplets",
    "adapter_state_dict",
    "apply_freeze_policy",
    "decompose_weights",
    "find_soma_config",
    "inject_soma",
    "load_adapter_state_dict",
    "merge_soma",
]
