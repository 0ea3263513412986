"""Optimizers: SGD (momentum, Nesterov, weight decay), Adam, AdamW, AdaGrad and RMSprop.

An optimizer is built without parameters (``Adam(lr=1e-3)``) and updates a model in
``opt.step(model)`` from the gradients its layers' ``backward`` left in ``module.grads``.
Its state (moment buffers, step count) is keyed by the model's ``state_dict`` keys.

Each update is one backend operation (``Backend.sgd_update``, ``Backend.adam_update``): on
NumPy and CuPy it runs in place, over all parameters gathered in one buffer; on engines
whose arrays may be immutable (JAX) each step computes new arrays and hands them to the
layer. The formulas are PyTorch's, so results agree with ``torch.optim``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from .errors import FormatError, ShapeError
from .layers.module import Module

__all__ = ["SGD", "AdaGrad", "Adam", "AdamW", "Optimizer", "RMSprop", "get"]


def _check_float(
    name: str, v: Any, lo: float, hi: float = math.inf, hi_open: bool = False
) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name} must be a number, got {v!r}")
    f = float(v)
    if not (lo <= f and (f < hi if hi_open else f <= hi)) or math.isnan(f):
        bound = f"[{lo}, {hi})" if hi_open else f"[{lo}, {hi}]"
        raise ValueError(f"{name} must be in {bound}, got {v!r}")
    return f


class Optimizer:
    """Base class. Subclasses implement ``_update``, which calls one backend operation."""

    #: names of the per-parameter state arrays, e.g. ``("exp_avg", "exp_avg_sq")``
    state_names: tuple[str, ...] = ()

    def __init__(self, lr: float) -> None:
        self.lr = _check_float("lr", lr, 0.0)
        self.t = 0  # steps taken
        self.state: dict[str, dict[str, Any]] = {}
        self._flat: _Flat | None = None  # the model's parameters in one buffer, where it can

    # -- public API ----------------------------------------------------------------
    def step(self, model: Module) -> None:
        """Update every parameter of ``model`` from its ``grads`` (one optimisation step)."""
        slots = list(_slots(model))
        for key, m, n in slots:
            if m.grads.get(n) is None:
                raise RuntimeError(
                    f"{type(self).__name__}.step: {m._where()} has no gradient for {n!r} "
                    f"(state dict key {key!r}); run a training-mode forward and backward first"
                )
        self.t += 1
        if slots:
            flat = self._flat
            if flat is None or not flat.matches(slots):
                flat = self._flat = _Flat.build(slots, self)
            if flat is not None:
                flat.run(self)
                return
        for key, m, n in slots:
            b = m.backend
            p, g = m.get_param(n), m.grads[n]
            if tuple(g.shape) != tuple(p.shape):
                raise ShapeError(
                    f"{type(self).__name__}.step: the gradient of {key!r} has shape "
                    f"{tuple(g.shape)}, the parameter {tuple(p.shape)}"
                )
            st = self.state.get(key)
            if st is None:
                st = self.state[key] = {}
            elif not _fits(b, st, p):
                st = self.state[key] = self._adopt(key, b, st, p)
            new = self._update(b, p, g, st)
            if new is not p:
                m._assign(n, new)
        if any(m.backend.lazy for _, m, _ in slots):
            self._settle(slots)

    def _settle(self, slots: list[tuple[str, Module, str]]) -> None:
        """Lazy engines (dask): compute the new parameters and state now, in one pass.

        Otherwise every step's arrays would be graphs over all the steps before, and the
        cost of a step would grow with the number of steps taken.
        """
        groups: dict[tuple[int, str], list[tuple[Any, Any]]] = {}
        for key, m, n in slots:
            b = m.backend
            if not b.lazy:
                continue
            p = m.get_param(n)
            setters = [(p, lambda a, m=m, n=n: m._assign(n, a))]
            st = self.state.get(key, {})
            for k, v in st.items():
                setters.append((v, lambda a, st=st, k=k: st.__setitem__(k, a)))
            for arr, put in setters:
                groups.setdefault((id(b), b.dtype_name(arr)), []).append((arr, put))
        backends = {id(m.backend): m.backend for _, m, _ in slots}
        for (bid, _), items in groups.items():
            b = backends[bid]
            xp = b.xp
            flat = xp.concat([xp.reshape(a, (-1,)) for a, _ in items])
            host = b.to_numpy(flat)  # one computation for every array of the group
            off = 0
            for arr, put in items:
                shape = tuple(arr.shape)
                size = math.prod(shape)
                put(b.from_numpy(np.ascontiguousarray(host[off : off + size].reshape(shape))))
                off += size

    def hyperparameters(self) -> dict[str, Any]:
        """The constructor arguments (JSON-able)."""
        return {"lr": self.lr}

    def state_dict(self) -> dict[str, Any]:
        """``{"name", "hyperparameters", "step", "state": {key: {buffer: ndarray}}}``.

        Arrays are NumPy copies, so the result can be saved and loaded on any backend.
        """
        from ._convert import to_numpy

        return {
            "name": type(self).__name__,
            "hyperparameters": self.hyperparameters(),
            "step": self.t,
            "state": {
                key: {
                    k: np.array(to_numpy(v), copy=True)
                    for k, v in st.items()
                    if k in self.state_names
                }
                for key, st in self.state.items()
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> Optimizer:
        """Restore what :meth:`state_dict` returned (arrays move to the model's backend
        at the next step). A state dict of another optimizer type is a FormatError."""
        if not hasattr(state, "keys") or not {"name", "step", "state"} <= set(state.keys()):
            raise FormatError(
                f"{type(self).__name__}.load_state_dict: expected a dict with keys 'name', "
                f"'hyperparameters', 'step', 'state' (from state_dict()), got {state!r:.200}"
            )
        if state["name"] != type(self).__name__:
            raise FormatError(
                f"{type(self).__name__}.load_state_dict: the state dict is of a "
                f"{state['name']} optimizer"
            )
        hyper = dict(state.get("hyperparameters", {}))
        type(self).__init__(self, **hyper)  # validates and sets the hyperparameters
        new_state: dict[str, dict[str, Any]] = {}
        for key, st in state["state"].items():
            if set(st) != set(self.state_names) and st:
                raise FormatError(
                    f"{type(self).__name__}.load_state_dict: parameter {key!r} has buffers "
                    f"{sorted(st)}, expected {sorted(self.state_names)}"
                )
            new_state[key] = {k: np.array(v, copy=True) for k, v in st.items()}
        self.t = int(state["step"])
        self.state = new_state
        return self

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters().items())
        return f"{type(self).__name__}({args})"

    def _adopt(self, key: str, b: Any, st: dict[str, Any], p: Any) -> dict[str, Any]:
        """Optimizer state loaded or kept from elsewhere, moved to ``p``'s backend and dtype
        (a shape that does not match: a clear error, not a broadcast failure)."""
        out = {}
        for k, v in st.items():
            if k not in self.state_names:
                continue
            if tuple(v.shape) != tuple(p.shape):
                raise ShapeError(
                    f"{type(self).__name__}: its state {k!r} for parameter {key!r} has shape "
                    f"{tuple(v.shape)} but the parameter has {tuple(p.shape)}; was this "
                    "optimizer used with another model? Use a new optimizer for it"
                )
            out[k] = b.asarray(v, b.dtype_name(p))
            if out[k] is v and b.mutable:
                out[k] = b.copy(v)
        return out

    # -- the update (one backend operation) ---------------------------------------------
    def _update(self, b: Any, p: Any, g: Any, st: dict[str, Any]) -> Any:
        """One step of parameter ``p``: the new parameter (``p`` itself where the backend
        updates in place)."""
        raise NotImplementedError


def _fits(b: Any, st: dict[str, Any], p: Any) -> bool:
    """The state arrays are ``b``'s, of ``p``'s shape and dtype."""
    for v in st.values():
        if not b.is_native(v) or tuple(v.shape) != tuple(p.shape) or v.dtype != p.dtype:
            return False
    return True


class _Flat:
    """A model's parameters, gradients and optimizer state gathered into contiguous 1-D
    buffers (on engines whose views write through: ``Backend.flat_views``), so each step
    is a dozen passes over one array instead of a dozen per parameter.

    The layers' parameters become views into the buffer (``module._assign``) and their
    ``grads`` entries views into the gradient buffer, which the backward passes fill in
    place. A parameter replaced from outside (``set_param``, ``load_state_dict``, ``to``)
    is noticed at the next step and the buffers are rebuilt, keeping the state.
    """

    def __init__(self) -> None:
        self.views: list[tuple[Module, str, Any, Any]] = []
        self.b: Any = None
        self.p: Any = None
        self.g: Any = None
        self.state: dict[str, Any] = {}

    @classmethod
    def build(cls, slots: list[tuple[str, Module, str]], opt: Optimizer) -> _Flat | None:
        b = slots[0][1].backend
        dtype = slots[0][1].get_param(slots[0][2]).dtype
        if any(m.backend is not b or m.get_param(n).dtype != dtype for _, m, n in slots):
            return None  # mixed backends or dtypes: per-parameter updates
        shapes = [tuple(m.get_param(n).shape) for _, m, n in slots]
        got = b.flat_views(shapes, dtype)
        if got is None:
            return None
        f = cls()
        f.b = b
        f.p, pviews = got
        f.g, gviews = b.flat_views(shapes, dtype) or got
        sviews = {}
        for k in opt.state_names:
            f.state[k], sviews[k] = b.flat_views(shapes, dtype) or got
        for i, (key, m, n) in enumerate(slots):
            p, g = m.get_param(n), m.grads[n]
            if tuple(g.shape) != shapes[i]:
                raise ShapeError(
                    f"{type(opt).__name__}.step: the gradient of {key!r} has shape "
                    f"{tuple(g.shape)}, the parameter {shapes[i]}"
                )
            pv = b.assign(pviews[i], p)
            gv = b.assign(gviews[i], g)
            old = opt.state.get(key) or {}
            if old and not _fits(b, old, p):
                old = opt._adopt(key, b, old, p)
            new = {}
            for k in opt.state_names:
                sv = sviews[k][i]
                if old.get(k) is not None:
                    b.assign(sv, old[k])
                new[k] = sv
            opt.state[key] = new
            m._assign(n, pv)
            m.grads[n] = gv
            f.views.append((m, n, pv, gv))
        return f

    def matches(self, slots: list[tuple[str, Module, str]]) -> bool:
        if len(slots) != len(self.views):
            return False
        for (_, m, n), (m2, n2, pv, _) in zip(slots, self.views, strict=True):
            if m is not m2 or n != n2 or m.get_param(n) is not pv:
                return False
        return True

    def run(self, opt: Optimizer) -> None:
        for m, n, _, gv in self.views:  # a gradient array replaced from outside: copy it in
            g = m.grads[n]
            if g is not gv:
                self.b.assign(gv, g)
                m.grads[n] = gv
        opt._update(self.b, self.p, self.g, self.state)


def _slots(model: Module) -> Iterator[tuple[str, Module, str]]:
    if not isinstance(model, Module):
        raise TypeError(f"optimizer.step expects a minifw Module, got {type(model).__name__}")
    return model.named_parameter_slots()


class SGD(Optimizer):
    """Stochastic gradient descent, PyTorch's formulation.

    ``g += weight_decay * p``; with momentum ``buf = momentum * buf + g`` (``buf = g`` at
    the first step) and ``g = g + momentum * buf`` (Nesterov) or ``g = buf``; then
    ``p -= lr * g``.
    """

    def __init__(
        self,
        lr: float = 0.01,
        momentum: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(lr)
        self.momentum = _check_float("momentum", momentum, 0.0, 1.0, hi_open=True)
        self.weight_decay = _check_float("weight_decay", weight_decay, 0.0)
        self.nesterov = bool(nesterov)
        if self.nesterov and self.momentum == 0.0:
            raise ValueError("SGD: nesterov=True needs a momentum > 0")
        self.state_names = ("momentum_buffer",) if self.momentum else ()

    def hyperparameters(self) -> dict[str, Any]:
        return {
            "lr": self.lr,
            "momentum": self.momentum,
            "nesterov": self.nesterov,
            "weight_decay": self.weight_decay,
        }

    def _update(self, b: Any, p: Any, g: Any, st: dict[str, Any]) -> Any:
        return b.sgd_update(p, g, st, self.lr, self.momentum, self.nesterov, self.weight_decay)


class Adam(Optimizer):
    """Adam (Kingma & Ba), PyTorch's formulation; ``weight_decay`` is the coupled L2 term.

    ``g += weight_decay * p``; ``m = b1 m + (1 - b1) g``; ``v = b2 v + (1 - b2) g**2``;
    ``p -= lr * (m / (1 - b1**t)) / (sqrt(v / (1 - b2**t)) + eps)``.
    """

    state_names = ("exp_avg", "exp_avg_sq")
    _decoupled = False

    def __init__(
        self,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(lr)
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError(f"betas must be a pair of floats, got {betas!r}")
        self.betas = (
            _check_float("betas[0]", betas[0], 0.0, 1.0, hi_open=True),
            _check_float("betas[1]", betas[1], 0.0, 1.0, hi_open=True),
        )
        self.eps = _check_float("eps", eps, 0.0)
        self.weight_decay = _check_float("weight_decay", weight_decay, 0.0)

    def hyperparameters(self) -> dict[str, Any]:
        return {
            "lr": self.lr,
            "betas": list(self.betas),
            "eps": self.eps,
            "weight_decay": self.weight_decay,
        }

    def _factors(self) -> tuple[float, float]:
        """(step size, eps') with ``p -= step * m / (sqrt(v) + eps')`` equal to the formula."""
        b1, b2 = self.betas
        bc1 = 1.0 - b1**self.t
        sbc2 = math.sqrt(1.0 - b2**self.t)
        return self.lr * sbc2 / bc1, self.eps * sbc2

    def _update(self, b: Any, p: Any, g: Any, st: dict[str, Any]) -> Any:
        step, eps = self._factors()
        return b.adam_update(
            p, g, st, self.lr, self.betas, self.weight_decay, self._decoupled, step, eps
        )


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter): ``p *= 1 - lr * weight_decay``
    before the Adam step, instead of adding the decay to the gradient."""

    _decoupled = True

    def __init__(
        self,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.01,
    ) -> None:
        super().__init__(lr, betas, eps, weight_decay)


class AdaGrad(Optimizer):
    """AdaGrad (Duchi et al.; the book's ``AdaGrad``), PyTorch's formulation and defaults.

    ``clr = lr / (1 + (t - 1) * lr_decay)``; ``g += weight_decay * p``; ``sum += g**2``
    (``sum`` starts at ``initial_accumulator_value``); ``p -= clr * g / (sqrt(sum) + eps)``.
    (The book adds its ``1e-7`` inside the update the same way, after the square root.)
    """

    state_names = ("sum",)

    def __init__(
        self,
        lr: float = 0.01,
        lr_decay: float = 0.0,
        weight_decay: float = 0.0,
        initial_accumulator_value: float = 0.0,
        eps: float = 1e-10,
    ) -> None:
        super().__init__(lr)
        self.lr_decay = _check_float("lr_decay", lr_decay, 0.0)
        self.weight_decay = _check_float("weight_decay", weight_decay, 0.0)
        self.initial_accumulator_value = _check_float(
            "initial_accumulator_value", initial_accumulator_value, 0.0
        )
        self.eps = _check_float("eps", eps, 0.0)

    def hyperparameters(self) -> dict[str, Any]:
        return {
            "lr": self.lr,
            "lr_decay": self.lr_decay,
            "weight_decay": self.weight_decay,
            "initial_accumulator_value": self.initial_accumulator_value,
            "eps": self.eps,
        }

    def _update(self, b: Any, p: Any, g: Any, st: dict[str, Any]) -> Any:
        clr = self.lr / (1.0 + (self.t - 1) * self.lr_decay)
        first = self.t == 1  # the accumulator starts at initial_accumulator_value
        return b.adagrad_update(
            p, g, st, clr, self.weight_decay, self.eps, self.initial_accumulator_value, first
        )


class RMSprop(Optimizer):
    """RMSprop (Tieleman & Hinton; the book's ``RMSprop``), PyTorch's formulation and
    defaults.

    ``g += weight_decay * p``; ``sq = alpha * sq + (1 - alpha) * g**2``; ``avg = sqrt(sq)
    + eps`` (``centered``: ``ga = alpha * ga + (1 - alpha) * g`` and ``avg = sqrt(sq -
    ga**2) + eps``); with ``momentum``: ``buf = momentum * buf + g / avg``, ``p -= lr *
    buf``; else ``p -= lr * g / avg``. State starts at zero.
    """

    def __init__(
        self,
        lr: float = 0.01,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        momentum: float = 0.0,
        centered: bool = False,
    ) -> None:
        super().__init__(lr)
        self.alpha = _check_float("alpha", alpha, 0.0, 1.0)
        self.eps = _check_float("eps", eps, 0.0)
        self.weight_decay = _check_float("weight_decay", weight_decay, 0.0)
        self.momentum = _check_float("momentum", momentum, 0.0, 1.0, hi_open=True)
        self.centered = bool(centered)
        names = ["square_avg"]
        if self.momentum:
            names.append("momentum_buffer")
        if self.centered:
            names.append("grad_avg")
        self.state_names = tuple(names)

    def hyperparameters(self) -> dict[str, Any]:
        return {
            "lr": self.lr,
            "alpha": self.alpha,
            "eps": self.eps,
            "weight_decay": self.weight_decay,
            "momentum": self.momentum,
            "centered": self.centered,
        }

    def _update(self, b: Any, p: Any, g: Any, st: dict[str, Any]) -> Any:
        return b.rmsprop_update(
            p, g, st, self.lr, self.alpha, self.eps, self.weight_decay, self.momentum,
            self.centered,
        )  # fmt: skip


_NAMES: dict[str, Callable[[], Optimizer]] = {
    "sgd": SGD,
    "adam": Adam,
    "adamw": AdamW,
    "adagrad": AdaGrad,
    "rmsprop": RMSprop,
}


def get(optimizer: str | Optimizer) -> Optimizer:
    """An optimizer from a name (``"sgd"``, ``"adam"``, ``"adamw"``, ``"adagrad"``,
    ``"rmsprop"``; default settings) or an
    instance (returned as is)."""
    if isinstance(optimizer, Optimizer):
        return optimizer
    if isinstance(optimizer, str) and optimizer.lower() in _NAMES:
        return _NAMES[optimizer.lower()]()
    raise ValueError(
        f"unknown optimizer {optimizer!r}; choose one of {sorted(_NAMES)} or an Optimizer "
        "instance from minifw.optim"
    )
