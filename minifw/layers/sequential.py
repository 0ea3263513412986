"""``Sequential``: modules applied in order; backward runs them in reverse."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from .. import backend as _backend
from ..errors import BackendError
from .module import SERVICES, Module


class Sequential(Module):
    """A chain of modules. ``state_dict`` keys are ``"<position>.<param>"``.

    >>> model = Sequential(Dense(784, 50), Sigmoid(), Dense(50, 10), Softmax())
    >>> model[0].weight.shape
    (784, 50)
    """

    _transient = ("_plan",)  # the inference plan (minifw.plan), rebuilt on use

    def __init__(self, *modules: Module) -> None:
        super().__init__()
        self._modules: list[Module] = []
        self._dtype_cache: str | None = None
        self._plan: Any = None  # minifw.plan.Plan, or None (not built yet)
        for m in modules:
            self.append(m)

    # -- container protocol ----------------------------------------------------------------
    def append(self, module: Module) -> Sequential:
        """Add ``module`` at the end; returns ``self``."""
        self._check_module(module, len(self._modules))
        self._modules.append(module)
        self._relabel()
        return self

    def _check_module(self, module: Any, index: int) -> None:
        if not isinstance(module, Module):
            raise TypeError(
                f"Sequential: item {index} must be a minifw Module, got {type(module).__name__}"
            )
        if module is self or any(m is self for m in module.modules()):
            raise ValueError("Sequential: a model cannot contain itself")
        mine = self._param_backend()
        theirs = _param_backend_of(module)
        if mine is not None and theirs is not None and mine is not theirs:
            raise BackendError(
                f"Sequential: item {index} ({type(module).__name__}) has parameters on backend "
                f"{theirs.name!r} but the model's are on {mine.name!r}; move it with "
                f".to({mine.name!r}) first"
            )

    def _param_backend(self) -> Any:
        for m in self._modules:
            b = _param_backend_of(m)
            if b is not None:
                return b
        return None

    def _relabel(self) -> None:
        b = self._param_backend() or (self._modules[0].backend if self._modules else self.backend)
        prefix = f"{self._label.removeprefix('layer ')}." if self._label else ""
        for i, m in enumerate(self._modules):
            m._label = f"layer {prefix}{i}"
            if isinstance(m, Sequential):
                m._relabel()
            for sub in m.modules():  # parameter-free modules adopt the model's backend
                if not sub.param_names and not sub.buffer_names:
                    sub.backend = b
        self.backend = b
        self._plan = None  # structure or backend changed: rebuild the plan on next use
        self._dtype_cache = next((m.dtype for m in self._modules if m.dtype is not None), None)

    def __getitem__(self, i: int) -> Module:
        if isinstance(i, slice):
            raise TypeError("Sequential does not support slicing; index one layer at a time")
        try:
            return self._modules[i]
        except (IndexError, TypeError):
            raise IndexError(
                f"Sequential index {i!r} out of range: the model has {len(self._modules)} layers"
            ) from None

    def __setitem__(self, i: int, module: Module) -> None:
        self[i]  # range check with a clear message
        self._check_module(module, i)
        self._modules[i] = module
        self._relabel()

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules)

    def modules(self) -> Iterator[Module]:
        yield self
        for m in self._modules:
            yield from m.modules()

    def named_parameter_slots(self, prefix: str = "") -> Iterator[tuple[str, Module, str]]:
        for i, m in enumerate(self._modules):
            yield from m.named_parameter_slots(f"{prefix}{i}.")

    def named_state_slots(self, prefix: str = "") -> Iterator[tuple[str, Module, str]]:
        for i, m in enumerate(self._modules):
            yield from m.named_state_slots(f"{prefix}{i}.")

    @property
    def dtype(self) -> str | None:
        return self._dtype_cache

    def to(self, name: str) -> Sequential:
        super().to(name)
        self._relabel()
        return self

    # -- forward / backward --------------------------------------------------------------
    def _forward(self, x: Any, owned: bool, train: bool) -> tuple[Any, bool]:
        if not train:
            return self._infer(x), True
        for m in self._modules:
            x, owned = m._forward(x, owned, train)
        return x, owned

    def _infer(self, x: Any, max_rows: int | None = None) -> Any:
        """Eval-mode forward of a native array through the inference plan (a new array, in
        chunks of at most ``max_rows`` rows)."""
        plan = self._plan
        if plan is None:
            plan = self._plan = SERVICES["compile_plan"](self)
        return plan.run(x, max_rows)

    def __call__(self, x: Any) -> Any:
        """Convert ``x`` to the model's backend and dtype (once), then run the forward pass
        (in eval mode through the inference plan, ``minifw.plan``)."""
        xb = self._b.asarray(x, self._dtype_cache)
        if self.training:
            return self._forward(xb, xb is not x, True)[0]
        plan = self._plan
        if plan is None:
            plan = self._plan = SERVICES["compile_plan"](self)
        return plan.run(xb)

    def _backward(self, grad: Any, need_input_grad: bool) -> Any:
        mods = self._modules
        for i in range(len(mods) - 1, 0, -1):
            grad = mods[i]._backward(grad, True)
        return mods[0]._backward(grad, need_input_grad) if mods else grad

    # -- inference -------------------------------------------------------------------------
    def predict(self, x: Any, batch_size: int | None = None) -> Any:
        """Forward pass in inference mode, in batches of at most ``batch_size`` rows.

        Returns a NumPy array that belongs to the caller (later calls never overwrite
        it); for a lazy engine such as dask, a lazy array of that engine. Safe to call
        from several threads at once. ``batch_size=None`` lets the plan choose. A dask
        array ``x`` gives a lazy dask result whatever the model's backend (chunks mapped
        over with a NumPy copy of the model; see ``minifw.backend._dask``).
        """
        if batch_size is not None and (
            isinstance(batch_size, bool)
            or not isinstance(batch_size, (int, np.integer))
            or batch_size < 1
        ):
            raise ValueError(
                f"predict: batch_size must be a positive int or None, got {batch_size!r}"
            )
        b = self._b
        if b.lazy:
            return b.predict(self, x, batch_size)  # type: ignore[attr-defined]
        if type(x) is not np.ndarray:
            xb_owner = _backend.backend_of(x)
            if xb_owner is not None and xb_owner.lazy:  # a dask array: a lazy result
                return xb_owner.predict(self, x, batch_size)  # type: ignore[attr-defined]
        xb = b.asarray(x, self._dtype_cache)
        res = b.to_numpy(self._infer(xb, batch_size))
        return res.copy() if _aliases(res, x) else res

    # -- training (minifw/training.py does the work) ---------------------------------------
    def fit(self, x: Any, y: Any, **kwargs: Any) -> Any:
        """Train on ``(x, y)``; returns a ``History``. The keyword arguments are those of
        :func:`minifw.training.fit` (``loss``, ``optimizer``, ``epochs``, ``batch_size``,
        ``shuffle``, ``seed``, ``validation_data``, ``progress``)."""
        return SERVICES["fit"](self, x, y, **kwargs)

    def evaluate(self, x: Any, y: Any, batch_size: int | None = None, **kwargs: Any) -> Any:
        """``{"loss": ..., "accuracy": ...}`` on ``(x, y)`` (see :func:`minifw.training.evaluate`)."""
        return SERVICES["evaluate"](self, x, y, batch_size, **kwargs)

    # -- description -----------------------------------------------------------------------
    def summary(
        self,
        input_shape: tuple[int, ...] | None = None,
        print_fn: Callable[[str], Any] | None = None,
    ) -> str:
        """Print (with ``print_fn``, default ``print``) and return a table of layers,
        output shapes and parameter counts, with the total.

        ``input_shape`` excludes the batch axis; by default it is taken from the first
        layer that declares its input size (``Dense``'s ``in_features``).
        """
        if input_shape is None:
            shape: tuple[int | None, ...] = next(
                (s for m in self.modules() if (s := m.input_shape()) is not None), (None,)
            )
        else:
            shape = (None, *input_shape)
        rows = []
        for i, m in enumerate(self._modules):
            shape = m.output_shape(shape)
            shown = "(" + ", ".join("None" if s is None else str(s) for s in shape) + ")"
            rows.append((str(i), type(m).__name__ + _arrow(m), shown, f"{m.num_parameters():,}"))
        head = ("#", "Layer", "Output shape", "Params")
        widths = [max(len(r[k]) for r in [head, *rows]) for k in range(4)]
        line = "-" * (sum(widths) + 6)

        def fmt(r: tuple[str, ...]) -> str:
            return (
                f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  "
                f"{r[3]:>{widths[3]}}"
            )

        total = self.num_parameters()
        lines = [line, fmt(head), line, *map(fmt, rows), line]
        lines.append(f"Total params: {total:,}")
        lines.append(f"Backend: {self.backend.name}, dtype: {self.dtype or 'float32'}")
        text = "\n".join(lines)
        (print_fn or print)(text)
        return text

    def output_shape(self, shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        for m in self._modules:
            shape = m.output_shape(shape)
        return shape

    def __repr__(self) -> str:
        if not self._modules:
            return "Sequential()"
        body = "\n".join(
            f"  ({i}): " + repr(m).replace("\n", "\n  ") for i, m in enumerate(self._modules)
        )
        return f"Sequential(\n{body}\n)"


def _arrow(m: Module) -> str:
    d = m._describe()
    name = type(m).__name__
    return d[len(name) :] if d.startswith(name) and d != name else ""


def _param_backend_of(m: Module) -> Any:
    for _, sub, _n in m.named_parameter_slots():
        return sub.backend
    return None


def _aliases(out: Any, x: Any) -> bool:
    return isinstance(x, np.ndarray) and np.may_share_memory(out, x)
