"""soma-d2: SoMA fine-tuning of DINOv2 ViTs for domain generalization in Detectron2.

Importing the package only installs warning filters (so that `soma_d2.soma` stays usable without
Detectron2); the Detectron2 parts register themselves when `soma_d2.config` is imported (it imports
`soma_d2.modeling`, the mapper registry and the installed project packages).
"""
from ._noise import silence_known_noise
from .version import __version__

silence_known_noise()

__all__ = ["__version__", "silence_known_noise"]
