"""Layers: one module per kind, forward beside backward."""

from .activations import Identity, ReLU, Sigmoid, Softmax, Step, Tanh
from .dense import Dense
from .flatten import Flatten
from .module import Module
from .sequential import Sequential

__all__ = [
    "Dense",
    "Flatten",
    "Identity",
    "Module",
    "ReLU",
    "Sequential",
    "Sigmoid",
    "Softmax",
    "Step",
    "Tanh",
]
