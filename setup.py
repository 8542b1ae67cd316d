"""Installs soma_d2; Detectron2 itself comes from scripts/setup_env.sh (it has no PyPI release)."""
from pathlib import Path

from setuptools import find_packages, setup

version = {}
exec((Path(__file__).parent / "soma_d2" / "version.py").read_text(), version)

setup(
    name="soma-d2",
    version=version["__version__"],
    description="SoMA (minor singular-component adaptation) of DINOv2 ViTs for domain-generalized "
    "detection and segmentation in Detectron2",
    long_description=(Path(__file__).parent / "README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["soma_d2", "soma_d2.*"]),
    install_requires=[
        "torch>=2.1",
        "torchvision",
        "numpy",
        "scipy",
        "pillow",
        "timm",
        "safetensors",
        "fvcore<0.1.6",
        "iopath<0.1.10",
        "pycocotools",
        "yacs",
        "tabulate",
    ],
    extras_require={"dev": ["pytest", "pytest-timeout", "transformers", "hypothesis", "ruff"]},
)
