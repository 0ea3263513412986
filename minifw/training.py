"""``fit`` and ``evaluate``: mini-batch training of a :class:`~minifw.Sequential`.

``model.fit`` and ``model.evaluate`` delegate here. One training step is a training-mode
forward, the loss and its gradient, each layer's hand-written backward in reverse (the
first layer skips its input gradient, which nothing needs), and one optimizer step.

When the model ends in Softmax and the loss is cross-entropy, the Softmax is skipped:
the loss comes from the logits by log-sum-exp and ``(p - t) / N`` goes straight into the
layer below. On NumPy/CuPy the batch is gathered into a buffer reused at every step; on
other engines every step works functionally (no array is mutated).
"""

from __future__ import annotations

import math
import sys
import threading
import time
from typing import Any

import numpy as np

from . import _random, _train_blocks
from . import losses as _losses
from . import optim as _optim
from ._convert import to_numpy
from .backend import Backend
from .errors import MinifwError, ShapeError
from .layers.activations import Softmax
from .layers.module import SERVICES, Module, fit_context

__all__ = ["History", "NonFiniteLossError", "evaluate", "fit"]

_EVAL_ELEMENTS = 1 << 22  # evaluate(batch_size=None): about this many activations per batch


class NonFiniteLossError(MinifwError, FloatingPointError):
    """The training loss, a gradient or an updated weight became NaN or infinite.
    ``epoch`` and ``step`` are 1-based; ``history`` holds the epochs completed before. The
    model keeps the weights from before the step that failed."""

    def __init__(self, message: str, epoch: int, step: int, history: History) -> None:
        super().__init__(message)
        self.epoch = epoch
        self.step = step
        self.history = history


class History:
    """What ``fit`` returns. ``history`` maps each metric to its per-epoch values (the
    Keras convention): ``loss``, ``accuracy`` and, with validation data, ``val_loss``,
    ``val_accuracy``. ``epoch`` lists the epoch indices (0-based, as in Keras)."""

    def __init__(self, params: dict[str, Any] | None = None) -> None:
        self.history: dict[str, list[float]] = {}
        self.epoch: list[int] = []
        self.params: dict[str, Any] = dict(params or {})

    def _append(self, epoch: int, logs: dict[str, float]) -> None:
        self.epoch.append(epoch)
        for k, v in logs.items():
            self.history.setdefault(k, []).append(float(v))

    def __repr__(self) -> str:
        last = {k: round(v[-1], 4) for k, v in self.history.items() if v}
        return f"History(epochs={len(self.epoch)}, last={last})"


# -- preparing data ------------------------------------------------------------------------


def _check_positive_int(name: str, v: Any, allow_zero: bool = False) -> int:
    lo = 0 if allow_zero else 1
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
        kind = "non-negative" if allow_zero else "positive"
        raise ValueError(f"{name} must be a {kind} int, got {v!r}")
    return int(v)


def _plan(model: Module) -> tuple[list[Module], bool]:
    """The top-level modules and whether the last one is a Softmax over the class axis."""
    mods = list(getattr(model, "_modules", [model]))
    last = mods[-1] if mods else None
    fusable = isinstance(last, Softmax) and last.axis in (-1, 1)
    return mods, fusable


def _train_order(mods: list[Module]) -> list[Module]:
    """The order a training step runs ``mods`` in: an activation that commutes with max
    pooling (ReLU) right before a max-pool runs after it instead. ``maxpool(relu(x))`` is
    ``relu(maxpool(x))`` exactly, and so are the gradients (a window's gradient reaches its
    first maximum either way, and nothing where that maximum is not positive), while the
    ReLU and its backward then touch a quarter of the elements (a 2x2 pool)."""
    out = list(mods)
    i = 0
    while i + 1 < len(out):
        a, p = out[i], out[i + 1]
        if getattr(a, "_commutes_with_max_pool", False) and getattr(p, "_is_max_pool", False):
            out[i], out[i + 1] = p, a
            i += 2
        else:
            i += 1
    return out


def _n_outputs(model: Module, x: Any) -> tuple[int, ...]:
    """The model's output shape for one sample, without running it if shapes are known."""
    shape = model.output_shape((None, *tuple(x.shape[1:])))
    if all(s is not None for s in shape[1:]):
        return tuple(int(s) for s in shape[1:])  # type: ignore[arg-type]
    y, _ = model._forward(x[:1, ...], False, False)
    return tuple(int(s) for s in y.shape[1:])


def _widest(model: Module, x: Any) -> int:
    """The most elements one sample has at any layer (input, activations, output)."""
    shape: tuple[Any, ...] = (None, *tuple(x.shape[1:]))
    widest = math.prod(shape[1:])
    for m in getattr(model, "_modules", [model]):
        shape = m.output_shape(shape)
        if any(s is None for s in shape[1:]):
            break
        widest = max(widest, math.prod(shape[1:]))
    return int(widest)


class _Targets:
    """Labels validated once and moved to the backend.

    ``y``: what the loss takes (int32 class indices, or float rows of the output's
    shape); ``cls``: int32 class indices for accuracy, or ``None`` (binary MSE);
    ``binary``: MSE with one output column (accuracy thresholds at 0.5).
    """

    def __init__(
        self,
        b: Backend,
        y: Any,
        n: int,
        out: tuple[int, ...],
        loss: _losses.Loss,
        where: str,
        dtype: str,
    ) -> None:
        yn = to_numpy(y) if not isinstance(y, np.ndarray) else y
        if yn.dtype.kind not in "biuf":
            raise TypeError(f"{where}: labels must be numeric, got dtype {yn.dtype}")
        if yn.ndim == 0 or yn.shape[0] != n:
            raise ShapeError(
                f"{where}: x has {n} samples but y has shape {tuple(yn.shape)} "
                f"(the first axis must have {n} entries)"
            )
        self.binary = False
        if isinstance(loss, _losses.CrossEntropy):
            if len(out) != 1:
                raise ShapeError(
                    f"{where}: cross-entropy needs a model with outputs of shape (N, C), "
                    f"this one gives (N, {', '.join(map(str, out))})"
                )
            c = out[0]
            if yn.ndim == 1:
                if yn.dtype.kind == "f":
                    if not np.all(np.isfinite(yn)) or np.any(yn != np.round(yn)):
                        raise ValueError(
                            f"{where}: 1-D labels are class indices and must be integers; "
                            "got non-integral values"
                        )
                if n and (yn.min() < 0 or yn.max() >= c):
                    bad = yn.min() if yn.min() < 0 else yn.max()
                    raise ValueError(
                        f"{where}: class index {bad:g} is out of range for a model with {c} "
                        f"outputs (valid: 0..{c - 1})"
                    )
                cls = np.ascontiguousarray(yn, dtype=np.int32)
                self.y = b.from_numpy(cls)
            elif yn.ndim == 2 and yn.shape[1] == c:
                rows = yn.sum(axis=1, dtype=np.float64)
                if np.any(yn < 0) or not np.allclose(rows, 1.0, atol=1e-3):
                    raise ValueError(
                        f"{where}: 2-D labels for cross-entropy must be one-hot (or probability) "
                        "rows: non-negative, each summing to 1"
                    )
                cls = np.ascontiguousarray(yn.argmax(axis=1), dtype=np.int32)
                self.y = b.asarray(np.ascontiguousarray(yn), dtype)
            else:
                raise ShapeError(
                    f"{where}: labels must be class indices of shape ({n},) or one-hot rows of "
                    f"shape ({n}, {c}), got shape {tuple(yn.shape)}"
                )
            self.cls: Any = b.from_numpy(cls)
            return
        # MSE: the target has the output's shape; (N,) is accepted for one output column
        if out == (1,) and yn.ndim == 1:
            yn = yn.reshape(n, 1)
        if tuple(yn.shape[1:]) != out:
            raise ShapeError(
                f"{where}: MSE targets must have the model's output shape "
                f"({n}, {', '.join(map(str, out))}), got {tuple(yn.shape)}"
            )
        self.y = b.asarray(np.ascontiguousarray(yn), dtype)
        if len(out) == 1 and out[0] > 1:
            self.cls = b.from_numpy(np.ascontiguousarray(yn.argmax(axis=1), dtype=np.int32))
        else:
            self.cls = None
            self.binary = True


def _correct(b: Backend, out: Any, cls: Any, ybatch: Any, binary: bool) -> Any:
    """Number of correctly classified rows, as a 0-d array of the backend."""
    xp = b.xp
    if binary:
        return b.count_equal(out > 0.5, ybatch > 0.5)
    return b.count_equal(xp.argmax(out, axis=1), cls)


def _loss_step(
    b: Backend,
    loss: _losses.Loss,
    fused: bool,
    out: Any,
    owned: bool,
    ybatch: Any,
    need_grad: bool,
) -> tuple[Any, Any]:
    if fused:
        return b.softmax_cross_entropy(out, ybatch, owned, need_grad)
    return loss._compute(b, out, ybatch, False)  # labels were validated once, up front


# -- fit -------------------------------------------------------------------------------------


def fit(
    model: Module,
    x: Any,
    y: Any,
    *,
    loss: str | _losses.Loss = "cross_entropy",
    optimizer: str | _optim.Optimizer | None = None,
    epochs: int = 1,
    batch_size: int = 32,
    shuffle: bool = True,
    seed: int | None = None,
    validation_data: tuple[Any, Any] | None = None,
    progress: bool = True,
) -> History:
    """Train ``model`` on ``(x, y)`` in mini-batches; returns a :class:`History`.

    ``loss``: ``"cross_entropy"`` (labels as class indices ``(N,)`` or one-hot rows
    ``(N, C)``), ``"mse"`` or a :class:`minifw.losses.Loss`. ``optimizer``: a name
    (``"sgd"``, ``"adam"``, ``"adamw"``) or an instance from :mod:`minifw.optim`; ``None``
    means ``Adam()`` (a new one each call: pass the same instance to later ``fit`` calls to
    keep its state, e.g. Adam's moments, across them). ``seed`` (a non-negative int) seeds
    the shuffling (``None``: drawn from ``mf.seed``'s generator), so ``mf.seed(n)`` before
    building the model plus ``fit(seed=n)`` gives bit-identical weights on the same backend
    and machine. ``progress=False`` silences the progress bar.

    Labels are validated before any step. A non-finite loss, gradient or updated weight
    raises :class:`NonFiniteLossError` naming the epoch, the step and what went non-finite;
    the model keeps the weights from before that step.

    The model is in training mode for this call only, and only in this thread: another
    thread's ``model(x)`` or ``predict`` meanwhile runs in eval mode and keeps nothing. Two
    ``fit`` calls on one model at once raise a ``RuntimeError`` naming the model.
    """
    where = "fit"
    epochs = _check_positive_int("epochs", epochs, allow_zero=True)
    batch_size = _check_positive_int("batch_size", batch_size)
    if seed is not None and (
        isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0
    ):
        raise ValueError(f"{where}: seed must be a non-negative int or None, got {seed!r}")
    loss_obj = _losses.get(loss)
    opt = _optim.get(optimizer if optimizer is not None else "adam")
    mods, fusable = _plan(model)
    fused = fusable and isinstance(loss_obj, _losses.CrossEntropy) and not loss_obj.from_logits
    if not any(m.num_parameters() for m in mods):
        raise ValueError(f"{where}: the model has no parameters to train")

    b = model.backend
    X = b.asarray(x, model.dtype or "float32")
    if len(X.shape) < 2:
        raise ShapeError(f"{where}: x must have a batch axis, shape (N, features), got {X.shape}")
    n = int(X.shape[0])
    if n == 0:
        raise ValueError(f"{where}: x is empty (0 samples)")
    out = _n_outputs(model, X)
    dtype = model.dtype or "float32"
    T = _Targets(b, y, n, out, loss_obj, where, dtype)
    val = None
    if validation_data is not None:
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
            raise TypeError(f"{where}: validation_data must be a pair (x_val, y_val)")
        xv = b.asarray(validation_data[0], model.dtype or "float32")
        if len(xv.shape) < 2 or tuple(xv.shape[1:]) != tuple(X.shape[1:]):
            raise ShapeError(
                f"{where}: validation x has shape {tuple(xv.shape)}, expected "
                f"(M, {', '.join(map(str, X.shape[1:]))})"
            )
        if int(xv.shape[0]) == 0:
            raise ValueError(f"{where}: validation_data is empty (0 samples)")
        yv = _Targets(
            b, validation_data[1], int(xv.shape[0]), out, loss_obj, "fit (validation)", dtype
        )
        val = (xv, yv)

    rng = np.random.default_rng(seed if seed is not None else _random.rng().integers(2**63))
    # Dropout's masks: a child generator (spawning leaves the shuffling stream unchanged)
    layer_rng = rng.spawn(1)[0]
    steps = -(-n // batch_size)
    history = History({"epochs": epochs, "steps": steps, "batch_size": batch_size, "samples": n})
    model._fit_loss = loss_obj  # type: ignore[attr-defined]  # evaluate()'s default
    bar_cls = _progress_bar() if progress else None
    body = _train_blocks.fuse(_train_order(mods[:-1] if fused else mods))
    first = next(i for i, m in enumerate(body) if m.num_parameters())
    back = list(range(len(body) - 1, first - 1, -1))
    xbuf = b.empty((min(batch_size, n), *X.shape[1:]), X.dtype) if b.mutable else None
    slots = list(model.named_parameter_slots())
    # layers whose training work is mostly outside BLAS: the engine may split the step
    section = b.train_section(any(getattr(m, "_batch_parallel", False) for m in model.modules()))
    lock = _fit_lock(model)
    if not lock.acquire(blocking=False):
        raise RuntimeError(
            f"fit: {type(model).__name__} at 0x{id(model):x} is already being trained by "
            "another fit call; train one model in one thread at a time (or train a copy)"
        )
    try:
        with fit_context(list(model.modules())), _random.using_layer_rng(layer_rng):
            for epoch in range(epochs):
                order = rng.permutation(n) if shuffle else None
                order_b = b.index_array(order) if order is not None else None
                loss_sum = 0.0
                correct_sum = 0
                seen = 0
                t0 = time.perf_counter()
                bar = bar_cls(total=steps, desc=f"Epoch {epoch + 1}/{epochs}") if bar_cls else None
                for step in range(steps):
                    s, e = step * batch_size, min(n, (step + 1) * batch_size)
                    nb = e - s
                    if order_b is None:
                        xb, owned = X[s:e, ...], False
                        yb = T.y[s:e, ...]
                        cb = T.cls[s:e] if T.cls is not None else None
                    else:
                        idx = order_b[s:e]
                        xb = b.take_rows(X, idx, xbuf[:nb] if xbuf is not None else None)
                        yb = b.take_rows(T.y, idx)
                        cb = b.take_rows(T.cls, idx) if T.cls is not None else None
                        owned = True
                    with section:  # the engine's threads, whatever other threads do
                        h = xb
                        for m in body:
                            h, owned = m._forward(h, owned, True)
                        correct = _correct(b, h, cb, yb, T.binary)
                        lval, grad = _loss_step(b, loss_obj, fused, h, owned, yb, True)
                        lf = float(lval)
                        where_step = (
                            f"at epoch {epoch + 1}, step {step + 1} of {steps} (samples {s}..{e - 1} "
                            "of this epoch's order)"
                        )
                        if not math.isfinite(lf):
                            _non_finite(f"the loss became {lf}", where_step, epoch, step, history)
                        for i in back:
                            grad = body[i]._backward(grad, i > first)
                        grads = [m.grads[nm] for _, m, nm in slots]
                        bad = [] if b.all_finite(grads) else [
                            key for (key, _, _), g in zip(slots, grads, strict=True)
                            if not b.all_finite([g])
                        ]  # fmt: skip
                        if bad:
                            _non_finite(
                                f"the gradient of {', '.join(bad)} is not finite", where_step,
                                epoch, step, history,
                            )  # fmt: skip
                        saved = [(m, nm, b.copy(m.get_param(nm))) for _, m, nm in slots]
                        opt.step(model)
                        params = [m.get_param(nm) for _, m, nm in slots]
                        bad = [] if b.all_finite(params) else [
                            key for (key, _, _), p in zip(slots, params, strict=True)
                            if not b.all_finite([p])
                        ]  # fmt: skip
                        if bad:
                            for m, nm, old in saved:  # back to the weights before this step
                                m._assign(nm, b.assign(m.get_param(nm), old))
                            _non_finite(
                                f"the update made {', '.join(bad)} non-finite", where_step,
                                epoch, step, history,
                            )  # fmt: skip
                    loss_sum += lf * nb
                    correct_sum += int(correct)
                    seen += nb
                    if bar is not None and (step % 10 == 9 or step == steps - 1):
                        dt = time.perf_counter() - t0
                        bar.set_postfix(
                            loss=f"{loss_sum / seen:.4f}",
                            acc=f"{correct_sum / seen:.4f}",
                            samples_s=f"{seen / dt:,.0f}" if dt > 0 else "-",
                            refresh=False,
                        )
                        bar.update(step + 1 - bar.n)
                rate = n / max(time.perf_counter() - t0, 1e-9)
                logs = {"loss": loss_sum / n, "accuracy": correct_sum / n}
                if val is not None:
                    vres = _evaluate(model, b, val[0], val[1], loss_obj, None)
                    logs["val_loss"], logs["val_accuracy"] = vres["loss"], vres["accuracy"]
                history._append(epoch, logs)
                if bar is not None:
                    shown = {k: f"{v:.4f}" for k, v in logs.items()}
                    bar.set_postfix(shown, samples_s=f"{rate:,.0f}", refresh=True)
                    bar.close()
    finally:
        for m in model.modules():
            if not m.training:
                m._clear_cache()
        lock.release()
    return history


_locks_guard = threading.Lock()


def _fit_lock(model: Module) -> threading.Lock:
    """The model's training lock (one ``fit`` at a time)."""
    with _locks_guard:
        lock = model.__dict__.get("_fit_lock")
        if lock is None:
            lock = threading.Lock()
            model.__dict__["_fit_lock"] = lock
        return lock  # type: ignore[no-any-return]


def _non_finite(what: str, where: str, epoch: int, step: int, history: History) -> None:
    raise NonFiniteLossError(
        f"fit: {what} {where}; training stopped and the model keeps the weights from before "
        "this step. Lower the learning rate or check the data for NaN/inf.",
        epoch + 1,
        step + 1,
        history,
    )


def _progress_bar() -> Any:
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is optional: a line per epoch instead
        return _LineBar

    def make(total: int, desc: str) -> Any:
        return tqdm(total=total, desc=desc, unit="step", file=sys.stderr, dynamic_ncols=True)

    return make


class _LineBar:
    """Stand-in for tqdm when it is not installed: prints one line per epoch."""

    def __init__(self, total: int, desc: str) -> None:
        self.total, self.desc, self.n = total, desc, 0
        self.postfix: dict[str, Any] = {}

    def set_postfix(self, d: dict[str, Any] | None = None, refresh: bool = True, **kw: Any) -> None:
        self.postfix = dict(d or {}, **kw)

    def update(self, k: int) -> None:
        self.n += k

    def close(self) -> None:
        items = ", ".join(f"{k}={v}" for k, v in self.postfix.items())
        print(f"{self.desc}: {self.n}/{self.total} steps, {items}", file=sys.stderr)


# -- evaluate ----------------------------------------------------------------------------------


def evaluate(
    model: Module,
    x: Any,
    y: Any,
    batch_size: int | None = None,
    *,
    loss: str | _losses.Loss | None = None,
) -> dict[str, float]:
    """Mean loss and accuracy of ``model`` on ``(x, y)`` in inference mode.

    ``loss=None`` uses the loss of the model's last ``fit`` (cross-entropy if none).
    ``batch_size=None`` picks large batches (a few million activations each).
    """
    if batch_size is not None:
        batch_size = _check_positive_int("batch_size", batch_size)
    if loss is None:
        loss = getattr(model, "_fit_loss", None) or "cross_entropy"
    loss_obj = _losses.get(loss)
    b = model.backend
    X = b.asarray(x, model.dtype or "float32")
    if len(X.shape) < 2:
        raise ShapeError(f"evaluate: x must have a batch axis, shape (N, features), got {X.shape}")
    n = int(X.shape[0])
    if n == 0:
        raise ValueError("evaluate: x is empty (0 samples)")
    out = _n_outputs(model, X)
    T = _Targets(b, y, n, out, loss_obj, "evaluate", model.dtype or "float32")
    return _evaluate(model, b, X, T, loss_obj, batch_size)


def _evaluate(
    model: Module, b: Backend, X: Any, T: _Targets, loss_obj: _losses.Loss, batch_size: int | None
) -> dict[str, float]:
    mods, fusable = _plan(model)
    fused = fusable and isinstance(loss_obj, _losses.CrossEntropy) and not loss_obj.from_logits
    body = mods[:-1] if fused else mods
    n = int(X.shape[0])
    if batch_size is None:
        batch_size = max(1, _EVAL_ELEMENTS // max(_widest(model, X), 1))
    total, correct = 0.0, 0
    for s in range(0, n, batch_size):
        e = min(n, s + batch_size)
        h, owned = X[s:e, ...], False
        for m in body:
            h, owned = m._forward(h, owned, False)
        yb = T.y[s:e, ...]
        cb = T.cls[s:e] if T.cls is not None else None
        correct += int(_correct(b, h, cb, yb, T.binary))
        lval, _ = _loss_step(b, loss_obj, fused, h, owned, yb, False)
        total += float(lval) * (e - s)
    return {"loss": total / n, "accuracy": correct / n}


SERVICES["fit"] = fit
SERVICES["evaluate"] = evaluate
