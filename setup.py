#!/usr/bin/env python
"""Install script of ``bcd``: knowledge distillation for dense prediction."""
from setuptools import find_packages, setup

# torch / torchvision: the local CPU-only torch wheel on some build machines breaks the
# registry's torchvision (``operator torchvision::nms does not exist``), so it is excluded by
# its local label; `constraints.txt` pins the tested pair.
INSTALL_REQUIRES = [
    "torch>=2.1,!=2.13.0+cpu",
    "torchvision>=0.16",
    "fvcore>=0.1.5.post20221221",
    "iopath>=0.1.9",
    "numpy>=1.24,<2.3",  # cityscapesscripts 2.3.0 uses np.in1d (removed in numpy 2.4)
    "pillow>=9,<13",  # cityscapesscripts saves 32-bit PNGs, refused by Pillow 13
    "opencv-python-headless>=4.8",
    "pycocotools>=2.0.7",
    "cityscapesscripts>=2.2.3",
    "tensorboard>=2.14",
    "timm>=0.9",
    "tabulate",
    "termcolor",
    "tqdm",
    "pysodmetrics>=1.4",  # SOD / COD metrics (object_seg evaluator); pins opencv-python-headless<5
    "pyyaml>=6",
    # Student-t quantiles of the evidence tools (bcd/utils/stats.py); Mask2Former's Hungarian
    # matching (transformers' Mask2FormerLoss)
    "scipy>=1.10",
    # tools/export.py (ONNX export, checked with onnxruntime) and tools/visualize.py (pictures)
    "onnx>=1.16",
    "onnxruntime>=1.18",
    "matplotlib>=3.7",
    # SegFormer (MiT encoder, decode head) and Mask2Former on transformers' model code;
    # hf://<repo_id> weights through huggingface_hub's cache
    "transformers>=5.0,<6",
    "huggingface_hub>=1.0",
]

setup(
    name="bcd",
    version="0.1.0",
    description="Knowledge distillation for dense prediction (BCD, SKD, APD and baselines)",
    packages=find_packages(exclude=("tests", "tests.*", "configs", "tools", "datasets")),
    python_requires=">=3.9",
    install_requires=INSTALL_REQUIRES,
    extras_require={
        "dev": ["pytest>=7", "pytest-xdist>=3"],
        # projects/bcd (the Detectron2 project): Detectron2 itself is built from its source first
        # (projects/bcd/README.md); its model zoo imports pkg_resources, gone from setuptools 81.
        "detectron2": ["setuptools<81"],
    },
)
