"""minifw: a small, fast, autograd-free neural-network framework on NumPy, CuPy and the
Array API.

    import minifw as mf
    model = mf.Sequential(mf.Dense(784, 50), mf.Sigmoid(), mf.Dense(50, 10), mf.Softmax())
    p = model.predict(x, batch_size=1000)

The backend (array engine) is chosen by ``MINIFW_BACKEND`` or ``mf.backend.use(name)``;
see :mod:`minifw.backend`. Importing minifw imports only NumPy; ``mf.datasets`` is loaded
on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from . import backend, functional, losses, optim, plan
from ._convert import to_numpy
from ._random import seed
from ._version import __version__
from .errors import BackendError, FormatError, MinifwError, ShapeError
from .gradcheck import GradientCheckError, gradcheck
from .layers import (
    AvgPool2D,
    BatchNorm,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    GlobalAvgPool2D,
    Identity,
    MaxPool2D,
    Module,
    ReLU,
    Sequential,
    Sigmoid,
    Softmax,
    Step,
    Tanh,
    register_layer,
)
from .persistence import from_weights, load, save
from .training import History, NonFiniteLossError

_LAZY = ("datasets", "cli", "training", "persistence", "onnx")


def __getattr__(name: str) -> Any:  # PEP 562: submodules loaded on first use
    if name in _LAZY:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'minifw' has no attribute {name!r}")


__all__ = [
    "AvgPool2D",
    "BackendError",
    "BatchNorm",
    "Conv2D",
    "Dense",
    "Dropout",
    "Flatten",
    "FormatError",
    "GradientCheckError",
    "GlobalAvgPool2D",
    "History",
    "Identity",
    "MaxPool2D",
    "MinifwError",
    "Module",
    "NonFiniteLossError",
    "ReLU",
    "Sequential",
    "ShapeError",
    "Sigmoid",
    "Softmax",
    "Step",
    "Tanh",
    "__version__",
    "backend",
    "datasets",
    "from_weights",
    "functional",
    "gradcheck",
    "load",
    "losses",
    "onnx",
    "optim",
    "plan",
    "register_layer",
    "save",
    "seed",
    "to_numpy",
]
