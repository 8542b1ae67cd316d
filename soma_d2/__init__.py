"""soma-d2: SoMA fine-tuning of DINOv2 ViTs for domain generalization in Detectron2.

Importing the package only installs warning filters; the Detectron2 parts register themselves
when `soma_d2.modeling` / `soma_d2.data` are imported (the trainer imports both).
"""
from ._noise import silence_known_noise
from .version import __version__

silence_known_noise()

__all__ = ["__version__", "silence_known_noise"]
