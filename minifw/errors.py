"""minifw's exception types.

Every error minifw raises on bad input is one of these (or a plain ``TypeError``
for a wrong Python type), with a message that names what was wrong and where.
"""

from __future__ import annotations


class MinifwError(Exception):
    """Base class of all minifw errors."""


class ShapeError(MinifwError, ValueError):
    """An array has the wrong shape for the layer, parameter or function it was given to."""


class BackendError(MinifwError, RuntimeError):
    """An unknown backend name, or a known backend that cannot run on this machine."""


class FormatError(MinifwError, ValueError):
    """A file (model, weights, dataset) or state dict is not what minifw expected."""
