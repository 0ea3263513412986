"""minifw: a small, fast, autograd-free MLP framework on NumPy, CuPy and the Array API.

    import minifw as mf
    model = mf.Sequential(mf.Dense(784, 50), mf.Sigmoid(), mf.Dense(50, 10), mf.Softmax())
    p = model.predict(x, batch_size=1000)

The backend (array engine) is chosen by ``MINIFW_BACKEND`` or ``mf.backend.use(name)``;
see :mod:`minifw.backend`. Importing minifw imports only NumPy.
"""

from __future__ import annotations

from . import backend, functional, losses, optim
from ._convert import to_numpy
from ._random import seed
from .errors import BackendError, FormatError, MinifwError, ShapeError
from .layers import (
    Dense,
    Flatten,
    Identity,
    Module,
    ReLU,
    Sequential,
    Sigmoid,
    Softmax,
    Step,
    Tanh,
)
from .training import History, NonFiniteLossError

__version__ = "0.1.0"

from .persistence import from_weights, load, save  # noqa: E402  (needs __version__)

__all__ = [
    "BackendError",
    "Dense",
    "Flatten",
    "FormatError",
    "History",
    "Identity",
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
    "from_weights",
    "load",
    "save",
    "functional",
    "losses",
    "optim",
    "seed",
    "to_numpy",
]
