"""NASLung: latency-aware 3D CNN search for lung-nodule malignancy, served and explained."""
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent


def _requirements() -> list[str]:
    # Runtime requirements only: tests and tooling are installed by the Makefile.
    skip = ("pytest", "hypothesis")
    lines = (HERE / "requirements.txt").read_text().splitlines()
    return [l for l in (s.split("#")[0].strip() for s in lines) if l and not l.startswith(skip)]


setup(
    name="naslung",
    version="0.1.0",
    description="Neural architecture search, ensembles, serving and explanations for lung-nodule CT",
    long_description=(HERE / "README.md").read_text() if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["naslung", "naslung.*", "search_spaces", "search_spaces.*", "service", "service.*"]),
    package_data={"naslung.data": ["assets/*"], "service": ["generated/*.py"]},
    install_requires=_requirements(),
    # bench/peers.py only (MONAI's 3D ResNet-18 / DenseNet-121 as peers); never a runtime need.
    # Install with --no-deps next to the pinned CPU torch: pip install --no-deps monai==1.6.1
    extras_require={"bench": ["monai==1.6.1"]},
    entry_points={"console_scripts": ["naslung=naslung.cli.main:main"]},
    license="MIT",
)
