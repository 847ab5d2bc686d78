from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent


def _requirements(name):
    lines = (here / name).read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith(("#", "-r"))]


setup(
    name="resnet_backbone",
    version="0.1.0",
    description="A ResNet backbone for detection (Faster R-CNN, DETR, DBNet) with a detectron2-compatible registry",
    long_description=(here / "README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["resnet_backbone", "resnet_backbone.*"]),
    install_requires=_requirements("requirements.txt"),
    extras_require={"dev": _requirements("requirements-dev.txt")},
    include_package_data=True,
)
