"""Stand-in Detectron2 parts for tests that need a model whose behaviour is known exactly."""
from __future__ import annotations

from detectron2.layers import ShapeSpec
from detectron2.modeling import Backbone
from torch import nn
from torch.nn import functional as F


class PoolBackbone(Backbone):
    """A translation-equivariant stand-in: 4x4 average pooling (stride 4), then a 1x1 conv."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Conv2d(3, 6, 1)

    def forward(self, x):
        return {"p2": self.proj(F.avg_pool2d(x, 4))}

    def output_shape(self):
        return {"p2": ShapeSpec(channels=6, stride=4)}

    @property
    def size_divisibility(self) -> int:
        return 4
