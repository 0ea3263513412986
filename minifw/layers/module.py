"""``Module``: the base of every layer and of ``Sequential``.

A module computes ``forward`` and writes its own ``backward`` (no autograd tape). In
training mode (``model.train()``) a module keeps what its backward needs from the last
forward; in eval mode (the default) it keeps nothing.

Internally every module implements ``_forward(x, owned, train) -> (y, y_owned)``:
``owned`` says the module may overwrite ``x`` (nobody else holds it), which lets an
activation run in place on the fresh output of the ``Dense`` before it; ``y_owned`` says
the same of the result. A module that keeps ``y`` for its backward returns ``False``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from .. import backend as _backend
from ..backend import Backend
from ..errors import ShapeError


class Module:
    """Base class: subclasses implement ``_forward`` and ``_backward``."""

    #: names of this module's parameters, e.g. ``("weight", "bias")``
    param_names: tuple[str, ...] = ()
    #: attributes that are caches rebuilt on demand: pickled and deep-copied as ``None``
    _transient: tuple[str, ...] = ()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for k in self._transient:
            if k in state:
                state[k] = None
        return state

    def __init__(self) -> None:
        self.backend = _backend.current()
        self.training: bool = False
        self.grads: dict[str, Any] = {}
        self._label: str | None = None  # "layer 2" once inside a Sequential

    @property
    def backend(self) -> Backend:
        """The :class:`~minifw.backend.Backend` this module computes on."""
        return self._b

    @backend.setter
    def backend(self, b: Backend) -> None:
        self._b = b
        self._fast = b.fast  # read on the hot path instead of self._b.fast

    # -- forward ----------------------------------------------------------------
    def _forward(self, x: Any, owned: bool, train: bool) -> tuple[Any, bool]:
        raise NotImplementedError

    def forward(self, x: Any) -> Any:
        """Forward pass on an array of this module's backend (no conversion)."""
        return self._forward(x, False, self.training)[0]

    def __call__(self, x: Any) -> Any:
        """Convert ``x`` to this module's backend and dtype (once), then ``forward``."""
        xb = self._b.asarray(x, self.dtype)
        return self._forward(xb, xb is not x, self.training)[0]

    # -- backward ---------------------------------------------------------------
    def _backward(self, grad: Any, need_input_grad: bool) -> Any:
        raise NotImplementedError(f"{self._where()} has no backward pass")

    def backward(self, grad_output: Any) -> Any:
        """Given dL/d(output) of the last training-mode forward, return dL/d(input).

        Parameter gradients are stored in ``self.grads`` (overwritten each call). The
        given gradient is never modified. A gradient of another engine (or a list) is
        converted to this module's backend first.
        """
        g = grad_output if self._b.is_native(grad_output) else self._b.asarray(grad_output)
        return self._backward(g, True)

    def _need_cache(self, cache: Any) -> Any:
        if cache is None:
            raise RuntimeError(
                f"{self._where()}: backward() needs a forward pass in training mode first "
                "(call model.train() before the forward pass)"
            )
        return cache

    # -- modes ------------------------------------------------------------------
    def train(self, mode: bool = True) -> Module:
        """Training mode: forward keeps what backward needs. Returns ``self``."""
        for m in self.modules():
            m.training = mode
            if not mode:
                m._clear_cache()
        return self

    def eval(self) -> Module:
        """Inference mode: forward keeps nothing. Returns ``self``."""
        return self.train(False)

    def _clear_cache(self) -> None:
        pass

    # -- structure ----------------------------------------------------------------
    def modules(self) -> Iterator[Module]:
        """This module and every module inside it."""
        yield self

    def named_parameter_slots(self, prefix: str = "") -> Iterator[tuple[str, Module, str]]:
        """``(state_dict key, owning module, parameter name)`` for every parameter."""
        for n in self.param_names:
            yield prefix + n, self, n

    def named_parameters(self) -> Iterator[tuple[str, Any]]:
        """``(key, array)`` pairs, keys as in :meth:`state_dict`."""
        for key, m, n in self.named_parameter_slots():
            yield key, m.get_param(n)

    def parameters(self) -> list[Any]:
        """The parameter arrays (native arrays of the backend, not copies)."""
        return [a for _, a in self.named_parameters()]

    def num_parameters(self) -> int:
        return sum(int(np.prod(a.shape)) for a in self.parameters())

    def get_param(self, name: str) -> Any:
        return getattr(self, "_" + name)

    def _assign(self, name: str, value: Any) -> None:
        """Replace parameter ``name`` without validation (optimizers on immutable engines)."""
        setattr(self, "_" + name, value)

    def set_param(self, name: str, value: Any) -> None:
        """Replace parameter ``name`` (validated: shape, then converted to backend + dtype)."""
        if name not in self.param_names:
            raise AttributeError(f"{self._where()} has no parameter {name!r}")
        old = self.get_param(name)
        new = self.backend.asarray(value, self.backend.dtype_name(old))
        if tuple(new.shape) == () and tuple(old.shape) != ():  # a scalar fills the parameter
            new = self.backend.xp.broadcast_to(new, old.shape)
            new = self.backend.xp.asarray(new, copy=True) if not self.backend.fast else new.copy()
        if tuple(new.shape) != tuple(old.shape):
            raise ShapeError(
                f"{self._where()}: {name} must have shape {tuple(old.shape)}, "
                f"got {tuple(new.shape)}"
            )
        if new is value and self.backend.fast:
            new = new.copy()  # never alias the caller's array: in-place updates would leak
        setattr(self, "_" + name, new)

    def state_dict(self) -> dict[str, np.ndarray]:
        """Parameters as NumPy copies, keyed PyTorch-style (``"0.weight"``, ``"0.bias"``, ...)."""
        out: dict[str, np.ndarray] = {}
        for key, m, n in self.named_parameter_slots():
            out[key] = np.array(m.backend.to_numpy(m.get_param(n)), copy=True)
        return out

    def load_state_dict(self, state: dict[str, Any]) -> Module:
        """Set every parameter from ``state`` (missing or unexpected keys: FormatError)."""
        from ..errors import FormatError

        if not hasattr(state, "keys"):
            raise TypeError(f"load_state_dict expects a mapping, got {type(state).__name__}")
        slots = {key: (m, n) for key, m, n in self.named_parameter_slots()}
        missing = [k for k in slots if k not in state]
        extra = [k for k in state if k not in slots]
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing keys {missing}")
            if extra:
                parts.append(f"unexpected keys {extra}")
            raise FormatError(
                f"state dict does not match {type(self).__name__}: "
                + "; ".join(parts)
                + f" (expected keys {list(slots)})"
            )
        for key, (m, n) in slots.items():
            try:
                m.set_param(n, state[key])
            except ShapeError as e:
                raise ShapeError(f"state dict key {key!r}: {e}") from None
        return self

    def to(self, name: str) -> Module:
        """Move parameters to backend ``name``; returns ``self``.

        All or nothing: if one parameter cannot move, the model is left as it was.
        """
        target = _backend.get(name, source=f"{type(self).__name__}.to()")
        moved: list[tuple[Module, dict[str, Any]]] = []
        for m in self.modules():
            if m.backend is not target:
                old = {n: m.get_param(n) for n in m.param_names}
                new = {n: target.asarray(p, m.backend.dtype_name(p)) for n, p in old.items()}
                moved.append((m, new))
        for m, params in moved:
            for n, p in params.items():
                setattr(m, "_" + n, p)
            m.backend = target
            m.grads = {}
            m._clear_cache()
        return self

    @property
    def dtype(self) -> str | None:
        """The parameters' dtype name, or ``None`` for a module without parameters."""
        for _, m, n in self.named_parameter_slots():
            return m.backend.dtype_name(m.get_param(n))
        return None

    # -- description --------------------------------------------------------------
    def _where(self) -> str:
        desc = self._describe()
        return f"{self._label} ({desc})" if self._label else desc

    def _describe(self) -> str:
        return type(self).__name__

    def _out_shape(self, shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return shape

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"

    def get_config(self) -> dict[str, Any]:
        """Constructor arguments, JSON-serialisable (used by save/load)."""
        return {}

    def save(self, path: str | os.PathLike[str]) -> None:
        """Save architecture and parameters to ``path`` (``.npz``, or ``.safetensors``);
        ``minifw.load(path)`` gives an equal model. See :mod:`minifw.persistence`.
        """
        from ..persistence import save

        save(self, path)
