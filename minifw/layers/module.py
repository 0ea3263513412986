"""``Module``: the base of every layer, built-in or your own, and of ``Sequential``.

The public contract (what a custom layer writes; see the README's "Custom layers"):

* ``add_parameter(name, value)`` in ``__init__``: a trainable array, converted to the
  module's backend, readable as ``self.<name>`` and keyed ``"<i>.<name>"`` in
  ``state_dict()``; ``add_buffer(name, value)``: state saved with the model but not
  trained (e.g. running statistics);
* ``forward(x)``: the output for ``x``, an array of the module's backend; when
  ``self.training`` it keeps what ``backward`` needs;
* ``backward(grad)``: given dL/d(output), fills ``self.grads[name]`` for each parameter and
  returns dL/d(input), never modifying ``grad``;
* ``get_config()``: the constructor's keyword arguments as JSON-able values;
* ``self.xp``: the backend's Array API namespace; ``output_shape(shape)`` (optional): the
  output shape for an input shape (``None`` for unknown sizes);
* ``@minifw.register_layer`` makes the class loadable by ``minifw.load``.

Built-in layers implement the faster internal hooks ``_forward(x, owned, train)`` and
``_backward(grad, need_input_grad)``: ``owned`` says the module may overwrite ``x``
(nobody else holds it), which lets an activation run in place on the fresh output of the
``Dense`` before it; the returned flag says the same of the result. Each form is derived
from the other, so a layer implements one pair.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any

import numpy as np

from .. import backend as _backend
from ..backend import Backend
from ..errors import FormatError, ShapeError

#: Functions that the modules above ``layers/`` install here (``save``, ``compile_plan``),
#: so that a layer calls them without importing upward.
SERVICES: dict[str, Callable[..., Any]] = {}

#: class name -> class, for ``minifw.load``: every built-in layer, and custom layers
#: registered with :func:`register_layer`
LAYERS: dict[str, type[Module]] = {}

# ids of the modules in training mode for this thread's / task's running ``fit``: another
# thread's forward pass on the same model sees them in eval mode
_FIT_TRAINING: ContextVar[frozenset[int]] = ContextVar("minifw_fit", default=frozenset())
# how many fit contexts are open in the process: with none, ``training`` skips the lookup
_FITS_OPEN = [0]
_FITS_LOCK = threading.Lock()


def register_layer(cls: type[Module]) -> type[Module]:
    """Make a :class:`Module` subclass loadable by name (use as a decorator).

    Its ``get_config()`` must return the JSON-able keyword arguments of its constructor.
    """
    if not (isinstance(cls, type) and issubclass(cls, Module)):
        raise TypeError(f"register_layer expects a Module subclass, got {cls!r}")
    old = LAYERS.get(cls.__name__)
    if old is not None and old is not cls and old.__module__.startswith("minifw."):
        if f"{old.__module__}.{old.__qualname__}" != f"{cls.__module__}.{cls.__qualname__}":
            raise ValueError(
                f"register_layer: {cls.__name__!r} is the name of a built-in minifw layer; "
                "give your layer another name"
            )
    LAYERS[cls.__name__] = cls
    return cls


class Module:
    """Base class of every layer. See the module docstring for the contract."""

    #: attributes that are caches rebuilt on demand: pickled and deep-copied as ``None``
    _transient: tuple[str, ...] = ()
    #: in eval mode each sample's output depends on that sample only, so the inference
    #: plan may run a batch in chunks of samples (minifw.plan)
    _rowwise: bool = False
    _b: Backend  # the backend (set in ``__init__``, changed by ``to``)

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if cls.__module__.startswith("minifw.") and not cls.__name__.startswith("_"):
            LAYERS[cls.__name__] = cls  # built-in layers register themselves

    def __init__(self) -> None:
        d = self.__dict__
        d["_param_names"] = []
        d["_buffer_names"] = []
        d["_b"] = _backend.current()
        self._training = False
        self.grads: dict[str, Any] = {}
        self._label: str | None = None  # "layer 2" once inside a Sequential

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_fit_lock", None)  # a running fit's lock is not part of the model
        for k in self._transient:
            if k in state:
                state[k] = None
        return state

    def __setattr__(self, name: str, value: Any) -> None:
        d = self.__dict__
        if name in d.get("_param_names", ()) or name in d.get("_buffer_names", ()):
            self.set_param(name, value)
        else:
            object.__setattr__(self, name, value)

    # -- parameters and buffers -----------------------------------------------------------
    def add_parameter(self, name: str, value: Any) -> Any:
        """Add a trainable parameter ``name`` (an array, list or scalar; floats keep their
        dtype, integers become float32), converted to the module's backend. Returns it."""
        return self._add(name, value, "_param_names")

    def add_buffer(self, name: str, value: Any) -> Any:
        """Add a state array ``name`` that is saved and moved with the model but not trained
        (no gradient; optimizers leave it alone). Returns it."""
        return self._add(name, value, "_buffer_names")

    def _add(self, name: str, value: Any, kind: str) -> Any:
        d = self.__dict__
        if "_param_names" not in d:
            raise RuntimeError(
                f"{type(self).__name__}: call super().__init__() before add_parameter"
            )
        if not isinstance(name, str) or not name.isidentifier() or "." in name:
            raise ValueError(f"{self._where()}: parameter name must be an identifier, got {name!r}")
        if name in d["_param_names"] or name in d["_buffer_names"]:
            raise ValueError(f"{self._where()} already has a parameter or buffer {name!r}")
        if name in d or hasattr(type(self), name):
            raise ValueError(f"{self._where()}: {name!r} is already an attribute")
        dt = str(getattr(value, "dtype", ""))
        arr = self._b.asarray(value, dt if dt in ("float32", "float64") else None)
        if arr is value and self._b.mutable:
            arr = self._b.copy(arr)  # never alias the caller's array
        d[name] = arr
        d[kind].append(name)
        return arr

    @property
    def param_names(self) -> tuple[str, ...]:
        """Names of this module's own parameters, in the order they were added."""
        return tuple(self.__dict__["_param_names"])

    @property
    def buffer_names(self) -> tuple[str, ...]:
        """Names of this module's own buffers (saved state that is not trained)."""
        return tuple(self.__dict__["_buffer_names"])

    def get_param(self, name: str) -> Any:
        return self.__dict__[name]

    def _assign(self, name: str, value: Any) -> None:
        """Replace parameter ``name`` without validation (optimizers on immutable engines)."""
        self.__dict__[name] = value

    def set_param(self, name: str, value: Any) -> None:
        """Replace parameter or buffer ``name`` (validated: shape, then converted to the
        backend and the old dtype)."""
        d = self.__dict__
        if name not in d["_param_names"] and name not in d["_buffer_names"]:
            raise AttributeError(f"{self._where()} has no parameter {name!r}")
        b = self._b
        old = d[name]
        new = b.asarray(value, b.dtype_name(old))
        if tuple(new.shape) == () and tuple(old.shape) != ():  # a scalar fills the parameter
            new = b.copy(b.xp.broadcast_to(new, old.shape))
        if tuple(new.shape) != tuple(old.shape):
            raise ShapeError(
                f"{self._where()}: {name} must have shape {tuple(old.shape)}, "
                f"got {tuple(new.shape)}"
            )
        if new is value and b.mutable:
            new = b.copy(new)  # never alias the caller's array: in-place updates would leak
        d[name] = new

    # -- backend ----------------------------------------------------------------------------
    @property
    def backend(self) -> Backend:
        """The :class:`~minifw.backend.Backend` this module computes on."""
        return self._b  # type: ignore[no-any-return]

    @backend.setter
    def backend(self, b: Backend) -> None:
        self.__dict__["_b"] = b

    @property
    def xp(self) -> Any:
        """The backend's Array API namespace (``numpy``, ``array_api_compat.torch``, ...)."""
        return self._b.xp

    # -- modes ------------------------------------------------------------------------------
    @property
    def training(self) -> bool:
        """True in training mode: ``model.train()``, or inside this thread's ``fit``."""
        if self._training:
            return True
        return bool(_FITS_OPEN[0]) and id(self) in _FIT_TRAINING.get()

    @training.setter
    def training(self, mode: bool) -> None:
        self._training = bool(mode)

    def train(self, mode: bool = True) -> Module:
        """Training mode: forward keeps what backward needs. Returns ``self``."""
        for m in self.modules():
            m._training = bool(mode)
            if not mode:
                m._clear_cache()
        return self

    def eval(self) -> Module:
        """Inference mode: forward keeps nothing. Returns ``self``."""
        return self.train(False)

    def _clear_cache(self) -> None:
        pass

    # -- forward ----------------------------------------------------------------------------
    def forward(self, x: Any) -> Any:
        """The output for ``x``, an array of this module's backend (no conversion)."""
        if type(self)._forward is Module._forward:
            raise NotImplementedError(f"{type(self).__name__} must implement forward(x)")
        return self._forward(x, False, self.training)[0]

    def _forward(self, x: Any, owned: bool, train: bool) -> tuple[Any, bool]:
        # a layer written to the public contract: ``forward`` reads ``self.training``
        if type(self).forward is Module.forward:
            raise NotImplementedError(f"{type(self).__name__} must implement forward(x)")
        return self.forward(x), False

    def __call__(self, x: Any) -> Any:
        """Convert ``x`` to this module's backend and dtype (once), then run forward."""
        xb = self._b.asarray(x, self.dtype)
        return self._forward(xb, xb is not x, self.training)[0]

    # -- backward ---------------------------------------------------------------------------
    def backward(self, grad: Any) -> Any:
        """Given dL/d(output) of the last training-mode forward, return dL/d(input).

        Parameter gradients are stored in ``self.grads`` (overwritten each call). The
        given gradient is never modified. A gradient of another engine (or a list) is
        converted to this module's backend first.
        """
        if type(self)._backward is Module._backward:
            raise NotImplementedError(f"{self._where()} has no backward pass")
        g = grad if self._b.is_native(grad) else self._b.asarray(grad)
        return self._backward(g, True)

    def _backward(self, grad: Any, need_input_grad: bool) -> Any:
        if type(self).backward is Module.backward:
            raise NotImplementedError(f"{self._where()} has no backward pass")
        return self.backward(grad)

    def _need_cache(self, cache: Any) -> Any:
        if cache is None:
            raise RuntimeError(
                f"{self._where()}: backward() needs a forward pass in training mode first "
                "(call model.train() before the forward pass)"
            )
        return cache

    def _check_grad(self, grad: Any, shape: tuple[int, ...]) -> None:
        if tuple(grad.shape) != tuple(shape):
            raise ShapeError(
                f"{self._where()}: backward expects a gradient of shape {tuple(shape)}, "
                f"got {tuple(grad.shape)}"
            )

    # -- structure --------------------------------------------------------------------------
    def modules(self) -> Iterator[Module]:
        """This module and every module inside it."""
        yield self

    def named_parameter_slots(self, prefix: str = "") -> Iterator[tuple[str, Module, str]]:
        """``(state_dict key, owning module, parameter name)`` for every parameter."""
        for n in self.__dict__["_param_names"]:
            yield prefix + n, self, n

    def named_state_slots(self, prefix: str = "") -> Iterator[tuple[str, Module, str]]:
        """Like :meth:`named_parameter_slots`, buffers included: what ``state_dict`` holds."""
        d = self.__dict__
        for n in d["_param_names"] + d["_buffer_names"]:
            yield prefix + n, self, n

    def named_parameters(self) -> Iterator[tuple[str, Any]]:
        """``(key, array)`` pairs, keys as in :meth:`state_dict`."""
        for key, m, n in self.named_parameter_slots():
            yield key, m.get_param(n)

    def parameters(self) -> list[Any]:
        """The parameter arrays (native arrays of the backend, not copies)."""
        return [a for _, a in self.named_parameters()]

    def num_parameters(self) -> int:
        """How many trainable numbers the module holds."""
        return sum(math.prod(a.shape) for a in self.parameters())

    def state_dict(self) -> dict[str, np.ndarray]:
        """Parameters and buffers as NumPy copies, keyed as in PyTorch (``"0.weight"``)."""
        return {
            key: np.array(m._b.to_numpy(m.get_param(n)), copy=True)
            for key, m, n in self.named_state_slots()
        }

    def load_state_dict(self, state: dict[str, Any]) -> Module:
        """Set every parameter and buffer from ``state`` (missing or unexpected keys:
        :class:`minifw.FormatError`; a wrong shape: :class:`minifw.ShapeError`)."""
        if not hasattr(state, "keys"):
            raise TypeError(f"load_state_dict expects a mapping, got {type(state).__name__}")
        slots = {key: (m, n) for key, m, n in self.named_state_slots()}
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
        """Move parameters and buffers to backend ``name``; returns ``self``.

        All or nothing: if one array cannot move, the model is left as it was.
        """
        target = _backend.get(name, source=f"{type(self).__name__}.to()")
        moved: list[tuple[Module, dict[str, Any]]] = []
        for m in self.modules():
            if m._b is not target:
                names = m.__dict__["_param_names"] + m.__dict__["_buffer_names"]
                new = {n: target.asarray(m.get_param(n), m._b.dtype_name(m.get_param(n)))
                       for n in names}  # fmt: skip
                moved.append((m, new))
        for m, arrays in moved:
            m.__dict__.update(arrays)
            m.backend = target
            m.grads = {}
            m._clear_cache()
        return self

    @property
    def dtype(self) -> str | None:
        """The parameters' dtype name, or ``None`` for a module without parameters."""
        for _, m, n in self.named_parameter_slots():
            return m._b.dtype_name(m.get_param(n))
        return None

    # -- description ------------------------------------------------------------------------
    def output_shape(self, shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        """The output shape for an input of ``shape`` (``None``: any size, e.g. the batch).

        The default runs ``forward`` in eval mode on zeros of one sample when every size
        is known, and otherwise assumes the shape is kept; layers that know override it.
        """
        if any(s is None for s in shape[1:]) or not shape:
            return shape
        x = self._b.asarray(np.zeros((1, *shape[1:]), self.dtype or "float32"))
        y, _ = self._forward(x, True, False)
        return (shape[0], *tuple(int(s) for s in y.shape[1:]))

    def input_shape(self) -> tuple[int | None, ...] | None:
        """The input shape this layer requires, batch axis as ``None`` (``Dense``:
        ``(None, in_features)``), or ``None`` when any shape will do."""
        return None

    @classmethod
    def declared_parameters(cls, config: dict[str, Any]) -> dict[str, tuple[tuple[int, ...], str]]:
        """The parameters (and buffers) that a module built from ``config`` would hold, as
        ``{name: (shape, dtype name)}``, without building it (the loader checks a file's
        size against them before allocating anything). Unknown here: ``{}``."""
        return {}

    def _where(self) -> str:
        desc = self._describe()
        return f"{self._label} ({desc})" if self._label else desc

    def _describe(self) -> str:
        return type(self).__name__

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"

    def get_config(self) -> dict[str, Any]:
        """Constructor arguments, JSON-serialisable (used by save/load)."""
        return {}

    def save(self, path: str | os.PathLike[str]) -> None:
        """Save architecture and parameters to ``path`` (``.npz``, or ``.safetensors``);
        ``minifw.load(path)`` gives an equal model. See :mod:`minifw.persistence`."""
        SERVICES["save"](self, path)


def fit_context(modules: list[Module]) -> Any:
    """Training mode for ``modules`` in this thread / task only (``fit`` enters it)."""
    return _FitContext(frozenset(id(m) for m in modules))


class _FitContext:
    def __init__(self, ids: frozenset[int]) -> None:
        self.ids = ids
        self.token: Any = None

    def __enter__(self) -> None:
        with _FITS_LOCK:
            _FITS_OPEN[0] += 1
        self.token = _FIT_TRAINING.set(_FIT_TRAINING.get() | self.ids)

    def __exit__(self, *exc: object) -> None:
        _FIT_TRAINING.reset(self.token)
        with _FITS_LOCK:
            _FITS_OPEN[0] -= 1
