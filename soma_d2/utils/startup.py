"""What an entry point does once its start-up (imports, config) is over."""
from __future__ import annotations

import gc

__all__ = ["freeze_startup_objects"]


def freeze_startup_objects() -> None:
    """Move every object alive after start-up out of the garbage collector's reach (`gc.freeze`).

    A Detectron2 process holds some 400,000 such objects (torch, torchvision and Detectron2
    modules, classes, functions) that live until exit: every full collection walks them all,
    interpreter exit finalizes them (about 1 s of a ViT-L backbone build that takes 4 s from the
    decomposition cache), and forked data-loader workers copy every page whose object headers a
    collection touches. Freezing after start-up and before forking is what the Python
    documentation of `gc.freeze` recommends. `tools/train_net.py` calls it in each launched
    process after `setup_cfg`; nothing calls it on import, so a library user's collector is
    left alone. Objects created later are collected as usual.
    """
    gc.freeze()
