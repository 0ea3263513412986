"""ONNX in and out: ``model.save("model.onnx")`` / ``mf.load("model.onnx")``.

Export (needs the optional ``onnx`` package: ``pip install "minifw[onnx]"``): opset 17 or
newer, float32 or float64, the batch axis dynamic. ``Dense`` -> ``Gemm`` (``transB=0``:
minifw's weight is ``(in, out)``) on 2-D inputs, ``MatMul`` + ``Add`` on more axes;
``Sigmoid``/``ReLU``/``Tanh``/``Softmax(axis)``/``Flatten``/``Identity`` -> the same-named
operators; ``Step`` -> ``Greater(x, 0)`` + ``Cast``. A custom layer provides its own nodes
with a method ``to_onnx(self, ctx, input_name) -> output_name`` (``ctx`` is an
:class:`OnnxBuilder`)::

    class Swish(mf.Module):
        def to_onnx(self, ctx, x):
            return ctx.add_node("Mul", [x, ctx.add_node("Sigmoid", [x])])

Import (needs nothing beyond NumPy: a small protobuf reader of its own): a graph that is one
chain from one float input to one output, of the operators :func:`chain_ops` lists, with
constant weights, plus the shape computations PyTorch's exporters emit for
``x.view(x.size(0), -1)`` (:data:`SHAPE_OPS`); ``Gemm`` with ``transB=1`` (PyTorch's
``Linear``) is transposed into minifw's layout. Anything else raises
:class:`minifw.FormatError` naming the first node it cannot take, before any weight is read.
External data is read only from files inside the model's folder.
"""

from __future__ import annotations

import os
from typing import Any

from ._export import DEFAULT_OPSET, OnnxBuilder, export, register_exporter, to_model_proto
from ._import import MAX_OPSET, MIN_OPSET, SHAPE_OPS, chain_ops, import_model, load

__all__ = [
    "DEFAULT_OPSET",
    "MAX_OPSET",
    "MIN_OPSET",
    "SHAPE_OPS",
    "OnnxBuilder",
    "chain_ops",
    "export",
    "load",
    "loads",
    "register_exporter",
    "to_model_proto",
]


def loads(data: bytes, *, backend: str | None = None, name: str = "<bytes>") -> Any:
    """The ONNX model serialized in ``data`` as a minifw ``Sequential`` (no external data)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"loads expects bytes, got {type(data).__name__}")
    return import_model(bytes(data), name, None, backend)


def is_onnx_path(path: str | os.PathLike[str]) -> bool:
    return os.fspath(path).lower().endswith(".onnx")
