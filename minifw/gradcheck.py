"""``mf.gradcheck``: a layer's (or model's) hand-written backward against finite differences.

    import minifw as mf
    mf.gradcheck(mf.Dense(3, 2), x)             # raises GradientCheckError if they disagree
    mf.gradcheck(model, x, max_checks=200)     # a sample of the entries of each array

It works for built-in and custom layers alike, on any backend: the check runs in float64
(parameters are cast for its duration and restored afterwards, so a float32 model can be
checked too) with the loss ``L = sum(g * y)`` for a fixed random ``g``, whose gradient with
respect to the output is ``g``. Every parameter's gradient and the input's are compared
with central differences ``(L(v + eps) - L(v - eps)) / (2 eps)``.

Randomness and kinks defeat finite differences: put ``Dropout`` layers in a model that has
``p=0`` (or check the layers without them), and keep inputs away from ReLU's and max
pooling's kinks (ties).
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np

from ._convert import to_numpy
from .errors import MinifwError
from .layers.module import Module

__all__ = ["GradientCheckError", "gradcheck"]


class GradientCheckError(MinifwError, AssertionError):
    """The analytic and the numerical gradient disagree. ``where`` names the array (``"x"``
    or a ``state_dict`` key), ``index`` the entry."""

    def __init__(self, message: str, where: str, index: tuple[int, ...]) -> None:
        super().__init__(message)
        self.where = where
        self.index = index


def _indices(shape: tuple[int, ...], max_checks: int | None, rng: Any) -> list[tuple[int, ...]]:
    size = math.prod(shape)
    if max_checks is None or size <= max_checks:
        return list(itertools.product(*(range(s) for s in shape)))
    flat = rng.choice(size, size=max_checks, replace=False)
    return [tuple(int(i) for i in np.unravel_index(f, shape)) for f in sorted(flat)]


def gradcheck(
    module: Module,
    x: Any,
    *,
    eps: float = 1e-6,
    rtol: float = 1e-5,
    atol: float = 1e-8,
    max_checks: int | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Check ``module``'s ``backward`` at input ``x`` against central finite differences.

    Returns the largest error of each array (``"x"`` and each ``state_dict`` key of a
    parameter), as ``|analytic - numeric| / (atol + rtol * |numeric|)`` (at most 1 when it
    passes). Raises :class:`GradientCheckError` naming the first array and entry where
    ``|analytic - numeric| > atol + rtol * |numeric|``. ``max_checks`` caps the entries
    checked per array (a seeded random sample); ``None`` checks every entry.
    """
    if not isinstance(module, Module):
        raise TypeError(f"gradcheck expects a minifw Module, got {type(module).__name__}")
    b = module.backend
    rng = np.random.default_rng(seed)
    slots = list(module.named_parameter_slots())
    saved = [(m, n, m.get_param(n)) for _, m, n in slots]
    buffers = [  # e.g. BatchNorm's running statistics, which training-mode passes update
        (m, n, b.copy(m.get_param(n))) for m in module.modules() for n in m.buffer_names
    ]
    modes = [(m, m._training) for m in module.modules()]
    x64 = np.array(to_numpy(x), dtype=np.float64, copy=True)
    try:
        for m, n, p in saved:
            m._assign(n, b.asarray(np.asarray(b.to_numpy(p), np.float64), "float64"))
        module.train()
        y = to_numpy(module.forward(b.asarray(x64, "float64")))
        g = rng.standard_normal(y.shape)
        dx = to_numpy(module.backward(b.asarray(g, "float64")))
        analytic = {"x": np.asarray(dx, np.float64)}
        for key, m, n in slots:
            if m.grads.get(n) is None:
                raise GradientCheckError(
                    f"gradcheck: {m._where()} set no gradient for {n!r} ({key!r}) in backward",
                    key,
                    (),
                )
            analytic[key] = np.asarray(to_numpy(m.grads[n]), np.float64)

        def loss() -> float:
            out = to_numpy(module.forward(b.asarray(x64, "float64")))
            return float(np.sum(np.asarray(out, np.float64) * g))

        worst: dict[str, float] = {}
        arrays: list[tuple[str, Any, Any]] = [("x", x64, None)]
        for key, m, n in slots:
            arrays.append((key, np.array(b.to_numpy(m.get_param(n)), np.float64), (m, n)))
        for key, v, owner in arrays:
            if tuple(analytic[key].shape) != tuple(v.shape):
                raise GradientCheckError(
                    f"gradcheck: the gradient of {key!r} has shape {analytic[key].shape}, "
                    f"the array {v.shape}",
                    key,
                    (),
                )
            worst[key] = 0.0
            for idx in _indices(tuple(v.shape), max_checks, rng):
                old = v[idx]
                lp_lm = []
                for step in (eps, -eps):
                    v[idx] = old + step
                    if owner is not None:
                        owner[0]._assign(owner[1], b.asarray(v, "float64"))
                    lp_lm.append(loss())
                v[idx] = old
                if owner is not None:
                    owner[0]._assign(owner[1], b.asarray(v, "float64"))
                num = (lp_lm[0] - lp_lm[1]) / (2 * eps)
                ana = float(analytic[key][idx])
                bound = atol + rtol * abs(num)
                err = abs(ana - num)
                worst[key] = max(worst[key], err / bound)
                if not err <= bound:
                    raise GradientCheckError(
                        f"gradcheck: d loss / d {key}{list(idx)} is {ana!r} by backward but "
                        f"{num!r} by finite differences (|difference| {err:.3g} > "
                        f"{bound:.3g} = atol + rtol * |numeric|)",
                        key,
                        idx,
                    )
        return worst
    finally:
        for m, n, p in saved + buffers:
            m._assign(n, p)
            m.grads = {}
        for m, mode in modes:
            m._training = mode
            m._clear_cache()
