"""Installs soma_d2 and the paper's heads in projects/; Detectron2 comes from scripts/setup_env.sh."""
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent
version = {}
exec((ROOT / "soma_d2" / "version.py").read_text(), version)

# projects/<Name>/<package>/ (Detectron2's layout): each project's package installs under its name
packages = find_packages(include=["soma_d2", "soma_d2.*"])
package_dir = {}
for project in sorted((ROOT / "projects").glob("*/")):
    for pkg in find_packages(where=str(project), exclude=["tests", "tests.*"]):
        packages.append(pkg)
        package_dir[pkg] = str((project / pkg.replace(".", "/")).relative_to(ROOT))

setup(
    name="soma-d2",
    version=version["__version__"],
    description="SoMA (minor singular-component adaptation) of DINOv2 ViTs for domain-generalized "
    "detection and segmentation in Detectron2",
    long_description=(ROOT / "README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=packages,
    package_dir=package_dir,
    install_requires=[
        "torch>=2.3",  # torch.amp.GradScaler("cuda"); tested with torch 2.14.1
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
    # the paper's heads declare themselves to soma_d2 (soma_d2/project_registry.py); a project of
    # your own adds a line "name = package:ProjectHooks object" to this group in its own setup.py
    entry_points={
        "soma_d2.projects": [
            "codino = soma_codino:PROJECT",
            "mask2former = soma_mask2former:PROJECT",
        ],
    },
    extras_require={"dev": ["pytest", "pytest-timeout", "transformers", "hypothesis", "ruff"]},
)
