"""The Dask backend: lazy, chunked arrays (``array_api_compat.dask.array``).

Everything a model computes on this backend is lazy: ``model(x)`` and ``model.predict(x)``
return a ``dask.array.Array`` and nothing runs until ``.compute()`` (or ``mf.to_numpy``),
on whatever scheduler is in force — the local threads, or the ``dask.distributed``
cluster of the current ``Client``.

``model.predict`` on a dask array (whatever backend the model is on) maps the forward pass
over the chunks along the batch axis (:meth:`DaskBackend.predict`): the model is copied to
NumPy once, that copy is one key of the graph (so a cluster ships the weights to each
worker once, not with every chunk), and every chunk's task runs it with NumPy.

This backend is meant for inference on data larger than one machine's memory; train on
numpy, torch or jax and move the model (``model.to("dask")`` or just call ``predict`` on a
dask array).
"""

from __future__ import annotations

import copy
import os
import sys
from typing import Any

import numpy as np

from ..errors import ShapeError
from ._base import Backend


class DaskBackend(Backend):
    name = "dask"
    lazy = True
    dlpack = False  # dask arrays are lazy: they go through NumPy (``from_array``)

    def __init__(self, xp: Any, version: str, da: Any, dask: Any) -> None:
        super().__init__(xp, version)
        self._da = da
        self._dask = dask

    def is_native(self, x: Any) -> bool:
        return isinstance(x, self._da.Array)

    def from_numpy(self, a: np.ndarray) -> Any:
        # A copy: the result is lazy, and the caller's array may change before it runs.
        return self._from_array(np.array(a, copy=True), None)

    def _from_array(self, a: Any, rows: int | None) -> Any:
        """``a`` (NumPy-like, not copied) as a dask array chunked along axis 0 only."""
        if a.ndim == 0:
            return self._da.from_array(a, chunks=())
        chunks: dict[int, Any] = {0: rows or "auto"}
        chunks.update({i: -1 for i in range(1, a.ndim)})
        return self._da.from_array(a, chunks=chunks)

    def to_numpy(self, x: Any) -> np.ndarray:
        return np.asarray(x.compute())

    def devices(self) -> list[str]:
        if "distributed" in sys.modules:  # a Client can exist only if this was imported
            import distributed

            try:
                client = distributed.default_client()
            except ValueError:
                client = None
            if client is not None:
                workers = client.scheduler_info().get("workers", {})
                threads = sum(int(w.get("nthreads", 0)) for w in workers.values())
                return [
                    f"distributed {client.scheduler.address} "
                    f"({len(workers)} workers, {threads} threads)"
                ]
        sched = self._dask.config.get("scheduler", None) or "threads"
        return [f"local scheduler '{sched}' ({os.cpu_count()} CPUs)"]

    # -- distributed batch inference --------------------------------------------------
    def predict(self, model: Any, x: Any, batch_size: int | None) -> Any:
        """``model``'s inference-mode forward pass over ``x``, lazily, chunk by chunk.

        ``x``: a dask array (its chunking along axis 0 is kept; other axes are merged
        into one chunk), or any array, which is wrapped with chunks of ``batch_size``
        rows (``"auto"`` when ``None``) without being copied — it is read when the result
        is computed. Inside a chunk, ``batch_size`` bounds each forward pass as in NumPy
        ``predict``. Returns a dask array chunked like ``x`` along axis 0.
        """
        da = self._da
        runner = _numpy_copy(model)
        if self.is_native(x):
            xd = x
        else:
            from . import backend_of

            other = backend_of(x)
            if other is not None and other.name != "numpy":
                x = other.to_numpy(x)
            elif not hasattr(x, "ndim") or not hasattr(x, "dtype"):
                x = np.asarray(x)
            xd = self._from_array(x, batch_size)
        if xd.dtype.kind not in "biuf":
            raise TypeError(f"predict: expected a numeric array, got dtype {xd.dtype}")
        nd = xd.ndim
        if nd == 0:
            raise ShapeError("predict: expected an array with a feature axis, got a scalar")
        # The forward pass needs whole rows: one chunk along every axis but the batch axis.
        whole = {i: -1 for i in range(0 if nd == 1 else 1, nd)}
        if any(len(xd.chunks[i]) > 1 for i in whole):
            xd = xd.rechunk(whole)
        # One forward on a zero-filled row: the output's shape and dtype, and shape errors
        # now (with the layer named) rather than on a worker later.
        row = tuple(xd.shape) if nd == 1 else (1, *xd.shape[1:])
        try:
            probe = runner.predict(np.zeros(row, xd.dtype))
        except ShapeError as e:
            raise ShapeError(f"{e} (one row of the input of shape {tuple(xd.shape)})") from None
        if nd == 1:
            chunks: tuple[tuple[int, ...], ...] = tuple((s,) for s in probe.shape)
        else:
            chunks = (xd.chunks[0],) + tuple((s,) for s in probe.shape[1:])
        out_nd = len(chunks)
        kw: dict[str, Any] = {}
        if out_nd < nd:
            kw["drop_axis"] = list(range(out_nd, nd))
        elif out_nd > nd:
            kw["new_axis"] = list(range(nd, out_nd))
        # The NumPy model is one key of the graph: each worker fetches it once.
        model_key = self._dask.delayed(runner, pure=False)
        return da.map_blocks(
            _predict_block,
            xd,
            model_key,
            batch_size,
            chunks=chunks,
            dtype=probe.dtype,
            meta=np.empty((0,) * out_nd, probe.dtype),
            token="minifw-predict",
            **kw,
        )


def _numpy_copy(model: Any) -> Any:
    """An inference-mode copy of ``model`` on NumPy. Parameters go straight to NumPy (a
    model on a GPU is never duplicated there) and gradients are left behind."""
    from . import get

    memo: dict[int, Any] = {}
    for _, m, n in model.named_parameter_slots():
        p = m.get_param(n)
        if id(p) not in memo:
            memo[id(p)] = np.array(m.backend.to_numpy(p), copy=True)
    for m in model.modules():
        memo[id(m.grads)] = {}
    runner = copy.deepcopy(model, memo)
    numpy = get("numpy")
    for m in runner.modules():
        m.backend = numpy
    return runner.to("numpy").eval()  # ``to`` refreshes what depends on the backend


def _predict_block(block: np.ndarray, model: Any, batch_size: int | None) -> np.ndarray:
    """One chunk's forward pass, on a worker, with the NumPy copy of the model."""
    return model.predict(block, batch_size)


def load() -> Backend:
    import dask
    import dask.array as da
    from array_api_compat.dask import array as xp

    return DaskBackend(xp, dask.__version__, da, dask)
