"""Datasets: MNIST and Fashion-MNIST from local IDX files, a cache, or the canonical mirrors.

    from minifw.datasets import load_mnist
    x, y = load_mnist("test")          # (10000, 784) float32 in [0, 1], int64 labels

Downloading needs the optional packages ``pooch`` and ``tqdm`` (``pip install
"minifw[data]"``); they are imported only when a download is needed.
"""

from __future__ import annotations

from ._idx import IDX_TYPES, read_idx, write_idx
from ._loaders import DATA_ENV_VAR, DATASETS, Dataset, cache_dir, load_fashion_mnist, load_mnist

__all__ = [
    "DATASETS",
    "DATA_ENV_VAR",
    "IDX_TYPES",
    "Dataset",
    "cache_dir",
    "load_fashion_mnist",
    "load_mnist",
    "read_idx",
    "write_idx",
]
