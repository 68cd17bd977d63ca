"""Installable data-free knowledge-distillation engine.

``pip install -e ".[dev]"`` installs the engine and everything its jobs, tests and
benchmarks need. torch is left unpinned on purpose: pinning the CPU-only 2.13.0 wheel
would break torchvision (see DEVELOPERS.md).
"""
from setuptools import find_packages, setup

setup(
    name="fastdfkd",
    version="0.1.0",
    description="Data-free and data-driven knowledge distillation engine for PyTorch",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["datafree*", "engine*", "kd*", "registry*", "bench*"]),
    py_modules=["cifar100"],
    install_requires=[
        "torch>=2.1",
        "torchvision>=0.16",
        "kornia>=0.7",
        "numpy",
        "tensorboard",
        "tqdm",
        "scikit-learn",
        "matplotlib",
        "pyyaml",
    ],
    extras_require={"dev": ["pytest>=7"], "timm": ["timm"]},
    entry_points={
        "console_scripts": [
            "dfkd-train-teacher=cifar100:main",
            "dfkd-datafree=kd.faster_data_free_kd:main",
            "dfkd-kd=kd.train:main",
            "dfkd-eval-corruptions=kd.eval_corruptions:main",
        ]
    },
)
