"""``fit``'s fused convolution blocks: Conv2D, BatchNorm, then optionally a MaxPool2D
(without padding) and a ReLU, in the order a training step runs them
(``training._train_order`` puts a ReLU after the max-pool it precedes), become one step:
the backend's ``conv_bn_train`` / ``conv_bn_backward``.

Generic engines run the four layers' operations in turn. NumPy runs the block in two
phases each way, each phase one range of images per thread, instead of some thirteen
split operations: the convolution and the batch statistics of its output while in cache;
then the max-pool of the convolution's output itself (a positive per-channel scale and a
shift do not change which element of a window is largest; negative ones are pooled on
the negated channel), normalised, shifted and rectified on the pooled quarter; backward
the reductions on the pooled quarter, then the BatchNorm's input gradient and the
convolution's backward on each thread's own images (see ``backend/_block_numpy.py``).
Values and gradients equal the layers' own to rounding.

The layers keep what they hold: weights, gradients (``grads``), running statistics.
"""

from __future__ import annotations

from typing import Any

from .layers.activations import ReLU
from .layers.batchnorm import BatchNorm
from .layers.conv import Conv2D
from .layers.module import Module
from .layers.pooling import MaxPool2D


class ConvBlock:
    """One fused training step for ``conv``, ``bn`` and the optional ``pool``, ``relu``
    (the layers, which keep their parameters, gradients and running statistics)."""

    def __init__(
        self, conv: Conv2D, bn: BatchNorm, pool: MaxPool2D | None, relu: ReLU | None
    ) -> None:
        self.conv, self.bn, self.pool, self.relu = conv, bn, pool, relu
        self.layers: list[Module] = [m for m in (conv, bn, pool, relu) if m is not None]
        self._cache: Any = None
        self._out_shape: tuple[int, ...] = ()

    def num_parameters(self) -> int:
        return sum(m.num_parameters() for m in self.layers)

    def _forward(self, x: Any, owned: bool, train: bool) -> tuple[Any, bool]:
        if not train:  # (fit trains; an eval-mode pass is the layers' own)
            for m in self.layers:
                x, owned = m._forward(x, owned, False)
            return x, owned
        conv, bn, pool = self.conv, self.bn, self.pool
        shape = tuple(int(s) for s in x.shape)
        conv._check_input(shape)  # each layer's own ShapeError, as unfused
        y_shape = conv.output_shape(shape)
        bn._check_input(y_shape)  # type: ignore[arg-type]
        bn._check_train_input(y_shape)  # type: ignore[arg-type]
        out_shape = y_shape
        pool_args = None
        if pool is not None:
            pool._check_input(y_shape)  # type: ignore[arg-type]
            out_shape = pool.output_shape(y_shape)
            pool_args = (pool.kernel_size, pool.stride)
        bn_args = (bn.weight, bn.bias, bn.running_mean, bn.running_var, bn.momentum, bn.eps)
        z, self._cache, rm, rv = conv._b.conv_bn_train(
            x, (conv.weight, conv.bias, conv.stride, conv.padding), bn_args, pool_args,
            self.relu is not None,
        )  # fmt: skip
        bn._assign("running_mean", rm)
        bn._assign("running_var", rv)
        self._out_shape = tuple(int(s) for s in out_shape)  # type: ignore[arg-type]
        return z, self.relu is None  # with a ReLU, z is kept for its backward

    def _backward(self, grad: Any, need_input_grad: bool) -> Any:
        last = self.layers[-1]
        cache = last._need_cache(self._cache)
        last._check_grad(grad, self._out_shape)
        dx, dw, db, dgamma, dbeta = self.conv._b.conv_bn_backward(grad, cache, need_input_grad)
        self.conv.grads["weight"] = dw
        if self.conv.use_bias:
            self.conv.grads["bias"] = db
        self.bn.grads["weight"] = dgamma
        self.bn.grads["bias"] = dbeta
        return dx

    def _clear_cache(self) -> None:
        self._cache = None


def fuse(mods: list[Any]) -> list[Any]:
    """``mods`` (in training order) with each run Conv2D, BatchNorm[, MaxPool2D without
    padding][, ReLU] replaced by a :class:`ConvBlock`. Only these exact classes fuse (a
    subclass may compute something else)."""
    out: list[Any] = []
    i = 0
    while i < len(mods):
        conv = mods[i]
        bn = mods[i + 1] if i + 1 < len(mods) else None
        if type(conv) is not Conv2D or type(bn) is not BatchNorm:
            out.append(conv)
            i += 1
            continue
        j = i + 2
        pool = mods[j] if j < len(mods) else None
        if type(pool) is MaxPool2D and pool.padding == (0, 0):
            j += 1
        else:
            pool = None
        relu = mods[j] if j < len(mods) else None
        if type(relu) is ReLU:
            j += 1
        else:
            relu = None
        out.append(ConvBlock(conv, bn, pool, relu))
        i = j
    return out
