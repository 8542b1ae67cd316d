"""The one place that looks through DDP / DataParallel wrappers."""
from __future__ import annotations

from torch import nn

__all__ = ["unwrap_model"]


def unwrap_model(model: nn.Module) -> nn.Module:
    """Return the module inside DDP/DataParallel, so parameter names carry no `module.` prefix.

    Only real wrappers are opened: a model that merely has a child called `module` is returned as
    it is.
    """
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        return model.module
    return model
