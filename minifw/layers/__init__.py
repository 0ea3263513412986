"""Layers: one file per kind, forward beside backward; each registers itself for
``minifw.load`` when its class is defined."""

from .activations import Identity, ReLU, Sigmoid, Softmax, Step, Tanh
from .batchnorm import BatchNorm
from .conv import Conv2D
from .dense import Dense
from .dropout import Dropout
from .flatten import Flatten
from .module import Module, register_layer
from .pooling import AvgPool2D, GlobalAvgPool2D, MaxPool2D
from .sequential import Sequential

__all__ = [
    "AvgPool2D",
    "BatchNorm",
    "Conv2D",
    "Dense",
    "Dropout",
    "Flatten",
    "GlobalAvgPool2D",
    "Identity",
    "MaxPool2D",
    "Module",
    "ReLU",
    "Sequential",
    "Sigmoid",
    "Softmax",
    "Step",
    "Tanh",
    "register_layer",
]
