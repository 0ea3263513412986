"""Layers: one file per kind, forward beside backward; each registers itself for
``minifw.load`` when its class is defined."""

from .activations import Identity, ReLU, Sigmoid, Softmax, Step, Tanh
from .dense import Dense
from .flatten import Flatten
from .module import Module, register_layer
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
    "register_layer",
]
