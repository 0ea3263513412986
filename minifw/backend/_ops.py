"""The array operations, written once on the Array API standard.

:class:`Ops` is the base of every :class:`~minifw.backend.Backend`: layers, losses,
optimizers and the inference plan call these methods and never test which engine they run
on. Each method works on any engine (``self.xp`` is its namespace) and never writes into an
array, so it is right for immutable engines such as JAX; an engine overrides what it does
faster (``_ufunc.py`` for NumPy and CuPy, ``_numpy.py``, ``_cupy.py``, ``_torch.py``,
``_jax.py``).

Conventions:

* ``inplace=True`` means the caller owns ``x`` and the operation may write its result there
  (engines that cannot write in place ignore it); the result is always returned.
* ``out`` is an optional buffer of the result's shape and dtype that an engine may fill
  (engines that cannot write in place ignore it and return a new array).
* Backward operations take the forward's output ``y`` (or input ``x``) and the gradient
  ``g`` of the loss with respect to the output, and never modify ``g``.

A new operation is one more method here (its generic version) plus, where an engine does it
faster, an override in that engine's module.
"""

from __future__ import annotations

from typing import Any

from ._conv import ConvOps

#: names of the elementwise activations that :meth:`Ops.activate` and :meth:`Ops.linear`
#: take (softmax is over the last axis)
ACTIVATIONS = ("sigmoid", "relu", "tanh", "step", "softmax")
#: the key of an engine's scratch array in an optimizer's per-parameter state (not saved)
SCRATCH = "scratch"


class Ops(ConvOps):
    """The generic operations (the convolution and pooling ones in :mod:`._conv`).
    ``self.xp`` is the engine's Array API namespace."""

    xp: Any
    #: arrays of this engine can be written in place (``out=`` buffers, ``inplace``)
    mutable: bool = False

    # -- allocation ------------------------------------------------------------------------
    def empty(self, shape: tuple[int, ...], dtype: Any) -> Any:
        """An uninitialised array (a buffer for ``out=``)."""
        return self.xp.empty(shape, dtype=dtype)

    # -- dense layers ------------------------------------------------------------------------
    def linear(self, x: Any, w: Any, b: Any = None, out: Any = None, act: str | None = None) -> Any:
        """``act(x @ w + b)``: ``x`` ``(..., in)``, ``w`` ``(in, out)``, ``b`` ``(out,)`` or
        ``None``; ``act`` one of :data:`ACTIVATIONS` or ``None``. Gives the same bits as
        ``activate(act, linear(x, w, b))``: engines fuse the two, never change the result."""
        y = x @ w
        if b is not None:
            y = y + b
        return self.activate(act, y, True) if act is not None else y

    def linear_backward(
        self, x: Any, w: Any, g: Any, grads: dict[str, Any], bias: bool, need_dx: bool
    ) -> Any:
        """Gradients of :meth:`linear` (without activation): ``grads["weight"]`` and, with
        ``bias``, ``grads["bias"]`` are set (engines may reuse the arrays already there);
        returns ``dL/dx`` or ``None``."""
        xp = self.xp
        n_in, n_out = w.shape
        x2 = xp.reshape(x, (-1, n_in))
        g2 = xp.reshape(g, (-1, n_out))
        grads["weight"] = xp.matrix_transpose(x2) @ g2
        if bias:
            grads["bias"] = xp.sum(g2, axis=0)
        return g @ xp.matrix_transpose(w) if need_dx else None

    # -- activations -------------------------------------------------------------------------
    def activate(self, name: str, x: Any, inplace: bool = False) -> Any:
        """The activation called ``name`` (one of :data:`ACTIVATIONS`)."""
        if name == "softmax":
            return self.softmax(x, inplace)
        return getattr(self, name)(x, inplace)

    def sigmoid(self, x: Any, inplace: bool = False) -> Any:
        """``1 / (1 + exp(-x))``; clamped where ``exp`` would overflow (no warning)."""
        xp = self.xp
        lo = -88.0 if x.dtype == xp.float32 else -709.0
        return 1 / (1 + xp.exp(-xp.clip(x, min=lo)))

    def relu(self, x: Any, inplace: bool = False) -> Any:
        """``max(x, 0)``; NaN passes; ``-0.0`` becomes ``+0.0`` (as NumPy's ``maximum``)."""
        xp = self.xp
        return xp.where(x <= 0, xp.zeros_like(x), x)

    def tanh(self, x: Any, inplace: bool = False) -> Any:
        return self.xp.tanh(x)

    def step(self, x: Any, inplace: bool = False) -> Any:
        """1 where ``x > 0``, else 0; NaN stays NaN."""
        xp = self.xp
        y = xp.where(x > 0, xp.ones_like(x), xp.zeros_like(x))
        return xp.where(xp.isnan(x), x, y)

    def softmax(self, x: Any, inplace: bool = False, axis: int = -1) -> Any:
        """Softmax along ``axis``, max-subtracted so ``exp`` never overflows."""
        xp = self.xp
        e = xp.exp(x - xp.max(x, axis=axis, keepdims=True))
        return e / xp.sum(e, axis=axis, keepdims=True)

    def log_softmax(self, x: Any, axis: int = -1) -> Any:
        """``log(softmax(x))`` by log-sum-exp."""
        xp = self.xp
        z = x - xp.max(x, axis=axis, keepdims=True)
        return z - xp.log(xp.sum(xp.exp(z), axis=axis, keepdims=True))

    def sigmoid_backward(self, y: Any, g: Any) -> Any:
        return g * y * (1.0 - y)

    def tanh_backward(self, y: Any, g: Any) -> Any:
        return g * (1.0 - y * y)

    def relu_backward(self, y: Any, g: Any) -> Any:
        xp = self.xp
        return xp.where(y > 0, g, xp.zeros_like(g))

    def softmax_backward(self, y: Any, g: Any, axis: int = -1) -> Any:
        """The Jacobian-vector product ``y * (g - sum(y * g, axis))``."""
        yg = y * g
        return yg - y * self.xp.sum(yg, axis=axis, keepdims=True)

    # -- losses ------------------------------------------------------------------------------
    def one_hot(self, idx: Any, n_classes: int, dtype: Any) -> Any:
        """Integer class indices ``(N,)`` as float one-hot rows ``(N, C)``."""
        xp = self.xp
        # on idx's device: a CUDA tensor compared with a CPU arange would fail
        dev = getattr(idx, "device", None)
        kw = {} if dev is None else {"device": dev}
        classes = xp.arange(n_classes, dtype=idx.dtype, **kw)
        return xp.astype(xp.reshape(idx, (-1, 1)) == xp.reshape(classes, (1, -1)), dtype)

    def is_index(self, target: Any) -> bool:
        """True for 1-D integer class indices."""
        return len(target.shape) == 1 and self.xp.isdtype(target.dtype, "integral")

    def softmax_cross_entropy(
        self, z: Any, target: Any, owned: bool = False, need_grad: bool = True
    ) -> tuple[Any, Any]:
        """Mean cross-entropy of ``softmax(z)`` against ``target`` and its gradient wrt the
        logits ``z`` ``(N, C)``: ``(loss as a 0-d array, (softmax(z) - t) / N or None)``.
        ``target``: class indices ``(N,)`` or probability rows ``(N, C)``. With ``owned`` an
        engine may work in ``z``'s memory."""
        xp = self.xp
        n = z.shape[0]
        logp = self.log_softmax(z, axis=1)
        t = self.one_hot(target, z.shape[1], z.dtype) if self.is_index(target) else target
        loss = -xp.sum(t * logp) / n
        if not need_grad:
            return loss, None
        return loss, (xp.exp(logp) - t) / n

    # -- batch normalisation -------------------------------------------------------------
    @staticmethod
    def _bn_axes(x: Any) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Reduction axes of ``x`` (N, C, ...) (all but the channel axis 1) and the shape a
        per-channel ``(C,)`` vector broadcasts with."""
        nd = len(x.shape)
        return (0, *range(2, nd)), (1, int(x.shape[1])) + (1,) * (nd - 2)

    def batchnorm_train(
        self,
        x: Any,
        gamma: Any,
        beta: Any,
        running_mean: Any,
        running_var: Any,
        momentum: float,
        eps: float,
    ) -> tuple[Any, Any, Any, Any, Any]:
        """Training-mode batch normalisation over axis 1 of ``x`` (N, C, ...), PyTorch's:
        batch mean and biased variance per channel normalise ``x``, then ``gamma * xhat +
        beta``; the running statistics move by ``momentum`` towards the batch mean and the
        *unbiased* batch variance. Returns ``(y, xhat, inv_std, new_running_mean,
        new_running_var)`` (engines that write in place update the running arrays and
        return them); ``xhat`` and ``inv_std`` (shaped to broadcast) are for the backward."""
        xp = self.xp
        axes, shape = self._bn_axes(x)
        m = 1
        for a in axes:
            m *= int(x.shape[a])
        mean = xp.mean(x, axis=axes, keepdims=True)
        xc = x - mean
        var = xp.mean(xc * xc, axis=axes, keepdims=True)
        inv_std = 1.0 / xp.sqrt(var + eps)
        xhat = xc * inv_std
        y = xhat * xp.reshape(gamma, shape) + xp.reshape(beta, shape)
        new_mean = (1.0 - momentum) * running_mean + momentum * xp.reshape(mean, (-1,))
        unbiased = xp.reshape(var, (-1,)) * (m / (m - 1))
        new_var = (1.0 - momentum) * running_var + momentum * unbiased
        return y, xhat, inv_std, new_mean, new_var

    def batchnorm_eval(
        self, x: Any, gamma: Any, beta: Any, running_mean: Any, running_var: Any, eps: float
    ) -> Any:
        """Eval-mode batch normalisation: ``(x - running_mean) / sqrt(running_var + eps) *
        gamma + beta`` per channel (axis 1)."""
        xp = self.xp
        _, shape = self._bn_axes(x)
        scale = gamma / xp.sqrt(running_var + eps)
        shift = beta - running_mean * scale
        return x * xp.reshape(scale, shape) + xp.reshape(shift, shape)

    def batchnorm_backward(
        self, g: Any, xhat: Any, inv_std: Any, gamma: Any, need_dx: bool
    ) -> tuple[Any | None, Any, Any]:
        """Gradients of :meth:`batchnorm_train`: ``(dx or None, dgamma, dbeta)``, with
        ``dx = inv_std * (gamma*g - mean(gamma*g) - xhat * mean(gamma*g*xhat))`` (means
        over the reduction axes)."""
        xp = self.xp
        axes, shape = self._bn_axes(g)
        dbeta = xp.sum(g, axis=axes)
        dgamma = xp.sum(g * xhat, axis=axes)
        if not need_dx:
            return None, dgamma, dbeta
        m = 1
        for a in axes:
            m *= int(g.shape[a])
        gg = g * xp.reshape(gamma, shape)
        dx = (
            gg
            - xp.reshape(dbeta * gamma, shape) / m
            - xhat * (xp.reshape(dgamma * gamma, shape) / m)
        )
        return dx * inv_std, dgamma, dbeta

    # -- a convolution block in training: Conv2D, BatchNorm, [max-pool], [ReLU] ------------
    def conv_bn_train(
        self,
        x: Any,
        conv: tuple[Any, Any, Any, Any],
        bn: tuple[Any, Any, Any, Any, float, float],
        pool: tuple[Any, Any] | None,
        relu: bool,
    ) -> tuple[Any, Any, Any, Any]:
        """Training forward of ``relu(maxpool(batchnorm(conv2d(x))))`` (``pool`` and
        ``relu`` optional; ``fit`` runs a ReLU after the max-pool it precedes, see
        ``training._train_order``). ``conv``: ``(w, b or None, stride, padding)``; ``bn``:
        ``(gamma, beta, running_mean, running_var, momentum, eps)``; ``pool``: the max-pool's
        ``(kernel, stride)``, no padding. Returns ``(z, cache, new_running_mean,
        new_running_var)``; ``cache`` is for :meth:`conv_bn_backward`. Here: the layers'
        operations in turn (engines override it with a fused version)."""
        w, b, stride, padding = conv
        gamma, beta, rmean, rvar, momentum, eps = bn
        y = self.conv2d(x, w, b, stride, padding)
        z, xhat, inv_std, rm, rv = self.batchnorm_train(y, gamma, beta, rmean, rvar, momentum, eps)
        am = None
        if pool is not None:
            z, am = self.maxpool2d(z, pool[0], pool[1], 0)
        if relu:
            z = self.relu(z, True)  # the block's own new array
        cache = (x, conv, gamma, tuple(int(s) for s in y.shape), xhat, inv_std, pool, am,
                 z if relu else None)  # fmt: skip
        return z, cache, rm, rv

    def conv_bn_backward(self, g: Any, cache: Any, need_dx: bool) -> tuple[Any, ...]:
        """Gradients of :meth:`conv_bn_train` from its ``cache``: ``(dx or None, dw, db,
        dgamma, dbeta)`` (``db`` also when the convolution has no bias)."""
        x, (w, _, stride, padding), gamma, y_shape, xhat, inv_std, pool, am, z = cache
        if z is not None:
            g = self.relu_backward(z, g)
        if pool is not None:
            g = self.maxpool2d_backward(g, am, y_shape, pool[0], pool[1], 0)
        g, dgamma, dbeta = self.batchnorm_backward(g, xhat, inv_std, gamma, True)
        dx, dw, db = self.conv2d_backward(g, x, w, stride, padding, need_dx)
        return dx, dw, db, dgamma, dbeta

    def dropout_apply(self, x: Any, mask: Any, inplace: bool = False) -> Any:
        """``x * mask`` (the mask holds ``0`` or ``1 / (1 - p)``, of ``x``'s dtype)."""
        return x * mask

    # -- training helpers --------------------------------------------------------------------
    def take_rows(self, a: Any, idx: Any, out: Any = None) -> Any:
        """``a[idx]`` along the first axis (into ``out`` where the engine can)."""
        return self.xp.take(a, idx, axis=0)

    def index_array(self, idx: Any) -> Any:
        """A NumPy integer index array as this engine's index array (for :meth:`take_rows`)."""
        return self.from_numpy(idx.astype("int32"))  # type: ignore[attr-defined]

    def count_equal(self, a: Any, b: Any) -> Any:
        """How many entries of ``a`` and ``b`` are equal, as a 0-d integer array."""
        xp = self.xp
        return xp.sum(xp.astype(a == xp.astype(b, a.dtype), xp.int32))

    def all_finite(self, arrays: list[Any]) -> bool:
        """True if every element of every array is finite."""
        xp = self.xp
        return all(bool(xp.all(xp.isfinite(a))) for a in arrays)

    def copy(self, a: Any) -> Any:
        """A new array equal to ``a``."""
        return self.xp.asarray(a, copy=True)

    def assign(self, dst: Any, src: Any) -> Any:
        """``src``'s values as the parameter that was ``dst``: written into ``dst`` where the
        engine can, else ``src`` itself. Returns what now holds them."""
        return src

    # -- optimizers --------------------------------------------------------------------------
    def sgd_update(
        self,
        p: Any,
        g: Any,
        st: dict[str, Any],
        lr: float,
        momentum: float,
        nesterov: bool,
        weight_decay: float,
    ) -> Any:
        """One SGD step (PyTorch's formulation) of parameter ``p`` with gradient ``g``;
        ``st`` holds ``"momentum_buffer"`` between steps. Returns the new parameter (engines
        that write in place return ``p`` itself)."""
        if weight_decay:
            g = g + weight_decay * p
        if momentum:
            buf = st.get("momentum_buffer")
            buf = g if buf is None else momentum * buf + g
            st["momentum_buffer"] = buf
            g = g + momentum * buf if nesterov else buf
        return p - lr * g

    def adam_update(
        self,
        p: Any,
        g: Any,
        st: dict[str, Any],
        lr: float,
        betas: tuple[float, float],
        weight_decay: float,
        decoupled: bool,
        step_size: float,
        eps_hat: float,
    ) -> Any:
        """One Adam / AdamW step (PyTorch's formulation), written as
        ``p -= step_size * m / (sqrt(v) + eps_hat)`` with the bias corrections folded into
        ``step_size`` and ``eps_hat``; ``st`` holds ``"exp_avg"`` and ``"exp_avg_sq"``."""
        xp = self.xp
        b1, b2 = betas
        if weight_decay:
            if decoupled:
                p = p * (1.0 - lr * weight_decay)
            else:
                g = g + weight_decay * p
        m = st.get("exp_avg")
        v = st.get("exp_avg_sq")
        m = (1.0 - b1) * g if m is None else b1 * m + (1.0 - b1) * g
        v = (1.0 - b2) * (g * g) if v is None else b2 * v + (1.0 - b2) * (g * g)
        st["exp_avg"], st["exp_avg_sq"] = m, v
        return p - step_size * (m / (xp.sqrt(v) + eps_hat))

    def adagrad_update(
        self,
        p: Any,
        g: Any,
        st: dict[str, Any],
        clr: float,
        weight_decay: float,
        eps: float,
        initial: float,
        first: bool,
    ) -> Any:
        """One AdaGrad step (PyTorch's formulation) with the decayed rate ``clr``:
        ``g += weight_decay * p; sum += g*g; p -= clr * g / (sqrt(sum) + eps)``; ``st``
        holds ``"sum"``, which starts at ``initial`` (reset to it when ``first``)."""
        xp = self.xp
        if weight_decay:
            g = g + weight_decay * p
        acc = st.get("sum")
        if acc is None or first:
            acc = xp.zeros_like(p) + initial
        acc = acc + g * g
        st["sum"] = acc
        return p - clr * (g / (xp.sqrt(acc) + eps))

    def rmsprop_update(
        self,
        p: Any,
        g: Any,
        st: dict[str, Any],
        lr: float,
        alpha: float,
        eps: float,
        weight_decay: float,
        momentum: float,
        centered: bool,
    ) -> Any:
        """One RMSprop step (PyTorch's formulation): ``g += weight_decay * p``;
        ``sq = alpha sq + (1 - alpha) g*g``; centered: ``ga = alpha ga + (1 - alpha) g`` and
        ``avg = sqrt(sq - ga*ga) + eps``, else ``avg = sqrt(sq) + eps``; with momentum
        ``buf = momentum buf + g / avg; p -= lr buf``, else ``p -= lr g / avg``. ``st``
        holds ``"square_avg"`` (and ``"grad_avg"``, ``"momentum_buffer"``), zero at first."""
        xp = self.xp
        if weight_decay:
            g = g + weight_decay * p
        sq = st.get("square_avg")
        sq = (1.0 - alpha) * (g * g) if sq is None else alpha * sq + (1.0 - alpha) * (g * g)
        st["square_avg"] = sq
        if centered:
            ga = st.get("grad_avg")
            ga = (1.0 - alpha) * g if ga is None else alpha * ga + (1.0 - alpha) * g
            st["grad_avg"] = ga
            avg = xp.sqrt(sq - ga * ga) + eps
        else:
            avg = xp.sqrt(sq) + eps
        if momentum:
            buf = st.get("momentum_buffer")
            buf = g / avg if buf is None else momentum * buf + g / avg
            st["momentum_buffer"] = buf
            return p - lr * buf
        return p - lr * (g / avg)

    def flat_views(self, shapes: list[tuple[int, ...]], dtype: Any) -> tuple[Any, list[Any]] | None:
        """One contiguous 1-D buffer and views of it shaped ``shapes`` (so an optimizer
        updates every parameter in one pass), or ``None`` where the engine has no views that
        write through."""
        return None

    # -- inference ---------------------------------------------------------------------------
    def compile(self, fn: Any) -> Any:
        """``fn(params, x) -> y``, a pure function of arrays, compiled where the engine can
        (``jax.jit``); else ``fn`` itself."""
        return fn

    def threads(self) -> int:
        """How many threads the inference plan may run chunks of a batch on (1: one call on
        the whole batch, for engines that parallelise inside their own calls)."""
        return 1

    def parallel_section(self) -> Any:
        """A context manager entered around chunks running on several threads."""
        import contextlib

        return contextlib.nullcontext()

    def whole_section(self) -> Any:
        """A context manager entered around work on the engine's own threads (a training
        step, an unchunked inference call): it never overlaps a ``parallel_section`` that
        changes them (NumPy), so such work gives the same bits whatever other threads do."""
        import contextlib

        return contextlib.nullcontext()

    def train_section(self, split: bool = False) -> Any:
        """A context manager entered around one training step (``fit``): here the
        :meth:`whole_section`. With ``split`` (the model has layers whose training work is
        mostly outside BLAS: convolutions, pools, BatchNorm), NumPy instead holds BLAS to
        one thread and splits each heavy operation of the step over the batch on
        :meth:`threads` threads."""
        return self.whole_section()


__all__ = ["ACTIVATIONS", "SCRATCH", "Ops"]
