"""Optimizers: SGD (momentum, Nesterov, weight decay), Adam and AdamW.

An optimizer is built without parameters (``Adam(lr=1e-3)``) and updates a model in
``opt.step(model)`` from the gradients its layers' ``backward`` left in ``module.grads``.
Its state (moment buffers, step count) is keyed by the model's ``state_dict`` keys.

On NumPy and CuPy parameters are updated in place with ufuncs writing into buffers kept
from step to step; on every other engine (the Array API path, where arrays may be
immutable, as in JAX) each step computes new arrays and hands them to the layer with
``module._assign``. The formulas are PyTorch's, so results agree with ``torch.optim``.
"""

from __future__ import annotations

import itertools
import math
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from .errors import FormatError
from .layers.module import Module

__all__ = ["SGD", "Adam", "AdamW", "Optimizer", "get"]


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
    """Base class. Subclasses implement ``_update_fast`` and ``_update_generic``."""

    #: names of the per-parameter state arrays, e.g. ``("exp_avg", "exp_avg_sq")``
    state_names: tuple[str, ...] = ()

    def __init__(self, lr: float) -> None:
        self.lr = _check_float("lr", lr, 0.0)
        self.t = 0  # steps taken
        self.state: dict[str, dict[str, Any]] = {}
        self._scratch: dict[str, Any] = {}  # fast path: one temporary per parameter
        self._flat: _Flat | None = None  # fast path: the model's parameters in one buffer

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
        if slots and all(m._fast for _, m, _ in slots):
            flat = self._flat
            if flat is None or not flat.matches(slots):
                flat = self._flat = _Flat.build(slots, self)
            if flat is not None:
                flat.run(self)
                return
        for key, m, n in slots:
            p, g = m.get_param(n), m.grads[n]
            st = self.state.get(key)
            if st is None:
                st = self.state[key] = {}
            elif st and not m.backend.is_native(next(iter(st.values()))):
                st = self.state[key] = {
                    k: m.backend.asarray(v, m.backend.dtype_name(p)) for k, v in st.items()
                }
            if m._fast:
                tmp = self._scratch.get(key)
                if tmp is None or tmp.shape != p.shape or tmp.dtype != p.dtype:
                    tmp = self._scratch[key] = m.backend.xp.empty_like(p)
                self._update_fast(m.backend.xp, p, g, st, tmp)
            else:
                m._assign(n, self._update_generic(m.backend.xp, p, g, st))
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
                key: {k: np.array(to_numpy(v), copy=True) for k, v in st.items()}
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

    # -- per-parameter updates ----------------------------------------------------------
    def _update_fast(self, xp: Any, p: Any, g: Any, st: dict[str, Any], tmp: Any) -> None:
        raise NotImplementedError

    def _update_generic(self, xp: Any, p: Any, g: Any, st: dict[str, Any]) -> Any:
        raise NotImplementedError


#: Threads that share a NumPy update (1: the calling thread only). Measured on 2 cores
#: with 2 BLAS threads, splitting made an epoch slower: after each GEMM the BLAS worker
#: threads spin for a while on the other core. Raise it when BLAS runs single-threaded.
THREADS = 1
#: Fewest elements per thread when an update is split.
MIN_CHUNK = 1 << 16
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _get_pool(workers: int) -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None or _pool._max_workers < workers:
            _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="minifw-optim")
        return _pool


class _Flat:
    """NumPy/CuPy fast path: a model's parameters, gradients and optimizer state gathered
    into contiguous 1-D buffers, so that each step is a dozen ufunc passes over one array
    (shared by ``THREADS`` threads on NumPy) instead of a dozen per parameter.

    The layers' parameters become views into the buffer (``module._assign``) and their
    ``grads`` entries views into the gradient buffer, which ``Dense.backward`` fills in
    place. A parameter replaced from outside (``set_param``, ``load_state_dict``, ``to``)
    is noticed at the next step and the buffers are rebuilt, keeping the state.
    """

    def __init__(self) -> None:
        self.views: list[tuple[Module, str, Any, Any]] = []
        self.p: Any = None
        self.g: Any = None
        self.tmp: Any = None
        self.state: dict[str, Any] = {}
        self.chunks: list[tuple[int, int]] = []
        self.workers = 0  # worker threads that share the update with the caller
        self.xp: Any = None

    @classmethod
    def build(cls, slots: list[tuple[str, Module, str]], opt: Optimizer) -> _Flat | None:
        b = slots[0][1].backend
        dtype = slots[0][1].get_param(slots[0][2]).dtype
        if any(m.backend is not b or m.get_param(n).dtype != dtype for _, m, n in slots):
            return None  # mixed backends or dtypes: per-parameter updates
        xp = b.xp
        sizes = [math.prod(m.get_param(n).shape) for _, m, n in slots]
        total = sum(sizes)
        f = cls()
        f.xp = xp
        f.p = xp.empty(total, dtype=dtype)
        f.g = xp.zeros(total, dtype=dtype)
        f.tmp = xp.empty(total, dtype=dtype)
        f.state = {k: xp.zeros(total, dtype=dtype) for k in opt.state_names}
        off = 0
        for (key, m, n), size in zip(slots, sizes, strict=True):
            p = m.get_param(n)
            shape = tuple(p.shape)
            pv = f.p[off : off + size].reshape(shape)
            pv[...] = p
            gv = f.g[off : off + size].reshape(shape)
            gv[...] = m.grads[n]
            old = opt.state.get(key) or {}
            new = {}
            for k, buf in f.state.items():
                sv = buf[off : off + size].reshape(shape)
                if old.get(k) is not None:
                    sv[...] = b.asarray(old[k], b.dtype_name(p))
                new[k] = sv
            opt.state[key] = new
            opt._scratch.pop(key, None)
            m._assign(n, pv)
            m.grads[n] = gv
            f.views.append((m, n, pv, gv))
            off += size
        nt = max(1, min(int(THREADS), total // MIN_CHUNK)) if b.name == "numpy" else 1
        f.workers = nt - 1
        nc = 1 if nt == 1 else min(2 * nt, total // max(1, MIN_CHUNK // 2))  # chunks to share
        bounds = [total * i // nc for i in range(nc + 1)]
        f.chunks = [(bounds[i], bounds[i + 1]) for i in range(nc)]
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
                gv[...] = g
                m.grads[n] = gv
        if len(self.chunks) == 1:
            opt._update_fast(self.xp, self.p, self.g, dict(self.state), self.tmp)
            return

        def part(i: int) -> None:
            s, e = self.chunks[i]
            st = {k: v[s:e] for k, v in self.state.items()}
            opt._update_fast(self.xp, self.p[s:e], self.g[s:e], st, self.tmp[s:e])

        task = _Task(part, len(self.chunks))
        pool = _get_pool(self.workers)
        for _ in range(self.workers):
            pool.submit(task.work)
        task.work()  # this thread takes chunks too, and all of them if no worker is free
        task.wait()


class _Task:
    """Chunks ``0..n-1`` of one update, taken in turn by whichever thread is free.

    The caller works too and waits only for chunks already taken by a worker, never for
    a worker that has not been scheduled yet (on a busy machine that can take a time
    slice of another process), so a split update is never much slower than one thread.
    """

    def __init__(self, fn: Any, n: int) -> None:
        self.fn, self.n = fn, n
        self._next = itertools.count()  # next() is atomic in CPython
        self._done = 0
        self._lock = threading.Lock()
        self._finished = threading.Event()
        self.error: BaseException | None = None

    def work(self) -> None:
        while True:
            i = next(self._next)
            if i >= self.n:
                return
            try:
                self.fn(i)
            except BaseException as e:  # re-raised in the caller by wait()
                self.error = e
            with self._lock:
                self._done += 1
                if self._done == self.n:
                    self._finished.set()

    def wait(self) -> None:
        self._finished.wait()
        if self.error is not None:
            raise self.error


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

    def _update_fast(self, xp: Any, p: Any, g: Any, st: dict[str, Any], tmp: Any) -> None:
        mu, wd, lr = self.momentum, self.weight_decay, self.lr
        if wd:
            xp.multiply(p, wd, out=tmp)
            tmp += g
            g = tmp
        if mu:
            buf = st.get("momentum_buffer")
            if buf is None:
                buf = st["momentum_buffer"] = g.copy()
            else:
                buf *= mu
                buf += g
            if self.nesterov:  # p -= lr * (g + mu * buf), in two passes through tmp
                xp.multiply(g, lr, out=tmp)
                p -= tmp
                xp.multiply(buf, lr * mu, out=tmp)
                p -= tmp
                return
            g = buf
        xp.multiply(g, lr, out=tmp)
        p -= tmp

    def _update_generic(self, xp: Any, p: Any, g: Any, st: dict[str, Any]) -> Any:
        mu, wd = self.momentum, self.weight_decay
        if wd:
            g = g + wd * p
        if mu:
            buf = st.get("momentum_buffer")
            buf = g if buf is None else mu * buf + g
            st["momentum_buffer"] = buf
            g = g + mu * buf if self.nesterov else buf
        return p - self.lr * g


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

    def _update_fast(self, xp: Any, p: Any, g: Any, st: dict[str, Any], tmp: Any) -> None:
        b1, b2 = self.betas
        wd = self.weight_decay
        if wd:
            if self._decoupled:
                p *= 1.0 - self.lr * wd
            else:
                xp.multiply(p, wd, out=tmp)
                tmp += g
                g = tmp.copy()
        m = st.get("exp_avg")
        if m is None:
            m = st["exp_avg"] = xp.zeros_like(p)
            v = st["exp_avg_sq"] = xp.zeros_like(p)
        else:
            v = st["exp_avg_sq"]
        # m = b1 m + (1 - b1) g  ==  b1 (m - g) + g
        m -= g
        m *= b1
        m += g
        # v = b2 v + (1 - b2) g^2  ==  b2 (v - g^2) + g^2
        xp.multiply(g, g, out=tmp)
        v -= tmp
        v *= b2
        v += tmp
        step, eps = self._factors()
        xp.sqrt(v, out=tmp)
        tmp += eps
        xp.divide(m, tmp, out=tmp)
        tmp *= step
        p -= tmp

    def _update_generic(self, xp: Any, p: Any, g: Any, st: dict[str, Any]) -> Any:
        b1, b2 = self.betas
        wd = self.weight_decay
        if wd:
            if self._decoupled:
                p = p * (1.0 - self.lr * wd)
            else:
                g = g + wd * p
        m = st.get("exp_avg")
        v = st.get("exp_avg_sq")
        m = (1.0 - b1) * g if m is None else b1 * m + (1.0 - b1) * g
        v = (1.0 - b2) * (g * g) if v is None else b2 * v + (1.0 - b2) * (g * g)
        st["exp_avg"], st["exp_avg_sq"] = m, v
        step, eps = self._factors()
        return p - step * (m / (xp.sqrt(v) + eps))


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


_NAMES: dict[str, Callable[[], Optimizer]] = {"sgd": SGD, "adam": Adam, "adamw": AdamW}


def get(optimizer: str | Optimizer) -> Optimizer:
    """An optimizer from a name (``"sgd"``, ``"adam"``, ``"adamw"``, default settings) or an
    instance (returned as is)."""
    if isinstance(optimizer, Optimizer):
        return optimizer
    if isinstance(optimizer, str) and optimizer.lower() in _NAMES:
        return _NAMES[optimizer.lower()]()
    raise ValueError(
        f"unknown optimizer {optimizer!r}; choose one of {sorted(_NAMES)} or an Optimizer "
        "instance from minifw.optim"
    )
