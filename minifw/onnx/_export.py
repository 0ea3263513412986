"""minifw -> ONNX, with the ``onnx`` package's helper API (the optional extra ``minifw[onnx]``).

Each layer adds its nodes through an :class:`OnnxBuilder`: the built-in layers through the
mappings in ``_EXPORTERS``, a custom layer through its own method
``to_onnx(ctx, input_name) -> output_name``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import FormatError

DEFAULT_OPSET = 17
MIN_EXPORT_OPSET = 17


def _onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise ImportError(
            'writing ONNX needs the optional package onnx: pip install "minifw[onnx]"'
        ) from None
    return onnx


class OnnxBuilder:
    """What a layer's ``to_onnx(ctx, input_name)`` receives: it adds nodes and initializers
    and returns the name of its output.

    Attributes:
        opset: the ONNX opset being written (17 or newer).
        dtype: the model's float type as a NumPy dtype name (``"float32"``/``"float64"``).
        elem_type: the same as an ONNX ``TensorProto`` element type (for ``Cast``).
        shape: the layer's input shape, ``None`` for unknown sizes (the batch is ``None``).
        prefix: a unique name prefix for this layer (``"3"`` for layer 3).
    """

    def __init__(self, opset: int, dtype: str) -> None:
        onnx = _onnx()
        self._onnx = onnx
        self.opset = opset
        self.dtype = dtype
        self.elem_type = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
        self.shape: tuple[int | None, ...] = ()
        self.prefix = ""
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self._names: set[str] = set()

    def fresh(self, hint: str) -> str:
        """A tensor name not used yet, made from this layer's prefix and ``hint``."""
        base = f"{self.prefix}.{hint}" if self.prefix else hint
        name, i = base, 1
        while name in self._names:
            name, i = f"{base}_{i}", i + 1
        self._names.add(name)
        return name

    def add_initializer(self, value: Any, hint: str = "const") -> str:
        """Add a constant tensor (any array, converted to NumPy) and return its name."""
        from .._convert import to_numpy

        arr = np.ascontiguousarray(to_numpy(value) if not isinstance(value, np.ndarray) else value)
        name = self.fresh(hint)
        self.initializers.append(self._onnx.numpy_helper.from_array(arr, name))
        return name

    def add_node(
        self, op_type: str, inputs: list[str], hint: str | None = None, **attrs: Any
    ) -> str:
        """Add one node of ``op_type`` (default ONNX domain) reading ``inputs`` (names; ``""``
        for an absent optional input) with attributes ``attrs``; returns its output's name."""
        out = self.fresh(hint or op_type)
        node_name = self.fresh(f"{op_type}_node")
        self.nodes.append(
            self._onnx.helper.make_node(op_type, inputs, [out], name=node_name, **attrs)
        )
        return out


# -- built-in mappings ---------------------------------------------------------------------


def _param(ctx: OnnxBuilder, layer: Any, name: str) -> str:
    from .._convert import to_numpy

    return ctx.add_initializer(to_numpy(layer.get_param(name)), name)


def _dense(layer: Any, ctx: OnnxBuilder, x: str) -> str:
    w = _param(ctx, layer, "weight")
    if len(ctx.shape) == 2:  # minifw's weight is (in, out): Gemm without transposing B
        ins = [x, w] + ([_param(ctx, layer, "bias")] if layer.use_bias else [])
        return ctx.add_node("Gemm", ins, "gemm", transB=0)
    y = ctx.add_node("MatMul", [x, w], "matmul")
    if layer.use_bias:
        y = ctx.add_node("Add", [y, _param(ctx, layer, "bias")], "add")
    return y


def _simple(op: str) -> Callable[[Any, OnnxBuilder, str], str]:
    def export(layer: Any, ctx: OnnxBuilder, x: str) -> str:
        return ctx.add_node(op, [x], op.lower())

    return export


def _softmax(layer: Any, ctx: OnnxBuilder, x: str) -> str:
    return ctx.add_node("Softmax", [x], "softmax", axis=int(layer.axis))


def _flatten(layer: Any, ctx: OnnxBuilder, x: str) -> str:
    if len(ctx.shape) <= 2:
        return ctx.add_node("Identity", [x], "flatten")  # minifw's Flatten keeps 2-D as is
    return ctx.add_node("Flatten", [x], "flatten", axis=1)


def _step(layer: Any, ctx: OnnxBuilder, x: str) -> str:
    zero = ctx.add_initializer(np.zeros((), ctx.dtype), "zero")
    g = ctx.add_node("Greater", [x, zero], "greater")
    return ctx.add_node("Cast", [g], "step", to=ctx.elem_type)


def _dropped(layer: Any, ctx: OnnxBuilder, x: str) -> str:
    return x


def _window_attrs(layer: Any) -> dict[str, Any]:
    kh, kw = layer.kernel_size
    ph, pw = layer.padding
    return {"kernel_shape": [kh, kw], "strides": list(layer.stride), "pads": [ph, pw, ph, pw]}


def _conv(layer: Any, ctx: OnnxBuilder, x: str) -> str:
    ins = [x, _param(ctx, layer, "weight")]
    if layer.use_bias:
        ins.append(_param(ctx, layer, "bias"))
    return ctx.add_node("Conv", ins, "conv", dilations=[1, 1], group=1, **_window_attrs(layer))


def _maxpool(layer: Any, ctx: OnnxBuilder, x: str) -> str:
    return ctx.add_node("MaxPool", [x], "maxpool", **_window_attrs(layer))


def _avgpool(layer: Any, ctx: OnnxBuilder, x: str) -> str:  # the pad counts, as in minifw
    return ctx.add_node("AveragePool", [x], "avgpool", count_include_pad=1, **_window_attrs(layer))


def _global_avgpool(layer: Any, ctx: OnnxBuilder, x: str) -> str:
    y = ctx.add_node("GlobalAveragePool", [x], "gap")  # (N, C, 1, 1); minifw's is (N, C)
    return ctx.add_node("Flatten", [y], "gap_flat", axis=1)


def _batchnorm(layer: Any, ctx: OnnxBuilder, x: str) -> str:
    ins = [x] + [_param(ctx, layer, n) for n in ("weight", "bias", "running_mean", "running_var")]
    # ONNX's momentum weighs the running statistic; minifw's (as PyTorch's) the batch's
    return ctx.add_node(
        "BatchNormalization",
        ins,
        "batchnorm",
        epsilon=float(layer.eps),
        momentum=1.0 - float(layer.momentum),
    )


_EXPORTERS: dict[str, Callable[[Any, OnnxBuilder, str], str]] = {
    "Dense": _dense,
    "ReLU": _simple("Relu"),
    "Sigmoid": _simple("Sigmoid"),
    "Tanh": _simple("Tanh"),
    "Identity": _simple("Identity"),
    "Softmax": _softmax,
    "Flatten": _flatten,
    "Step": _step,
    "Conv2D": _conv,
    "MaxPool2D": _maxpool,
    "AvgPool2D": _avgpool,
    "GlobalAvgPool2D": _global_avgpool,
    "BatchNorm": _batchnorm,
    "Dropout": _dropped,  # the identity at inference
}


def register_exporter(class_name: str, fn: Callable[[Any, OnnxBuilder, str], str]) -> None:
    """Install the export mapping of a built-in layer class (by name)."""
    _EXPORTERS[class_name] = fn


# -- the model -----------------------------------------------------------------------------


def _leaves(model: Any) -> list[Any]:
    from ..layers import Sequential

    if isinstance(model, Sequential):
        return [leaf for m in model for leaf in _leaves(m)]
    return [model]


def _exporter(layer: Any) -> Callable[[Any, OnnxBuilder, str], str] | None:
    from ..layers.module import LAYERS

    hook = getattr(layer, "to_onnx", None)
    if callable(hook):
        return lambda lay, ctx, x: hook(ctx, x)  # type: ignore[no-any-return]
    name = type(layer).__name__
    if LAYERS.get(name) is type(layer) and type(layer).__module__.startswith("minifw."):
        return _EXPORTERS.get(name)
    return None


def _input_shape(model: Any, leaves: list[Any], given: Any) -> tuple[int | None, ...]:
    if given is not None:
        dims = tuple(given)
        if not all(isinstance(d, int) and d > 0 for d in dims):
            raise ValueError(
                f"input_shape must be the sizes of one sample (positive ints, without the "
                f"batch), got {given!r}"
            )
        return (None, *dims)
    for leaf in leaves:
        s = leaf.input_shape()
        if s is not None:
            return tuple(s)
        if type(leaf).__name__ not in ("ReLU", "Sigmoid", "Tanh", "Identity", "Step", "Dropout"):
            break
    raise ValueError(
        "cannot tell the model's input shape from its first layer; pass input_shape=(...) "
        "(the sizes of one sample, without the batch), e.g. input_shape=(1, 28, 28)"
    )


def to_model_proto(model: Any, *, opset: int = DEFAULT_OPSET, input_shape: Any = None) -> Any:
    """The ``onnx.ModelProto`` of ``model`` (a minifw ``Sequential`` or layer); see
    :func:`export`."""
    from .._version import __version__
    from ..layers import Module

    onnx = _onnx()
    if not isinstance(model, Module):
        raise TypeError(f"ONNX export expects a minifw Module, got {type(model).__name__}")
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < MIN_EXPORT_OPSET:
        raise ValueError(f"opset must be an int >= {MIN_EXPORT_OPSET}, got {opset!r}")
    if opset > onnx.defs.onnx_opset_version():
        raise ValueError(
            f"opset {opset} is newer than the installed onnx {onnx.__version__} knows "
            f"({onnx.defs.onnx_opset_version()})"
        )
    leaves = _leaves(model)
    dtypes = {d for d in (m.dtype for m in leaves) if d is not None}
    if len(dtypes) > 1:
        raise ValueError(f"cannot export a model that mixes dtypes {sorted(dtypes)}")
    dtype = dtypes.pop() if dtypes else "float32"
    shape = _input_shape(model, leaves, input_shape)
    ctx = OnnxBuilder(opset, dtype)
    ctx._names.update({"input", "output"})
    x = "input"
    for i, layer in enumerate(leaves):
        fn = _exporter(layer)
        where = f"layer {i} ({type(layer).__name__})"
        if fn is None:
            raise TypeError(
                f"cannot export {where} to ONNX: no mapping for {type(layer).__name__}; give "
                "the class a method to_onnx(self, ctx, input_name) -> output_name that adds "
                "its nodes through ctx (a minifw.onnx.OnnxBuilder)"
            )
        ctx.shape = shape
        ctx.prefix = str(i)
        x = fn(layer, ctx, x)
        if not isinstance(x, str) or not x:
            raise TypeError(f"{where}: its ONNX mapping must return its output's name, got {x!r}")
        shape = layer.output_shape(shape)
    if x == "input" or not ctx.nodes or ctx.nodes[-1].output[0] != x:
        ctx.nodes.append(onnx.helper.make_node("Identity", [x], ["output"], name="output_node"))
    else:
        ctx.nodes[-1].output[0] = "output"
    batch = "batch"
    in_dims = [
        batch if d is None and k == 0 else d
        for k, d in enumerate(_input_shape(model, leaves, input_shape))
    ]
    out_dims = [batch if k == 0 else d for k, d in enumerate(shape)]
    graph = onnx.helper.make_graph(
        ctx.nodes,
        "minifw",
        [onnx.helper.make_tensor_value_info("input", ctx.elem_type, in_dims)],
        [onnx.helper.make_tensor_value_info("output", ctx.elem_type, out_dims)],
        ctx.initializers,
    )
    opsets = [onnx.helper.make_opsetid("", opset)]
    proto = onnx.helper.make_model(
        graph,
        opset_imports=opsets,
        producer_name="minifw",
        producer_version=__version__,
        ir_version=onnx.helper.find_min_ir_version_for(opsets),
    )
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as e:  # ValidationError, InferenceError: a mapping wrote a bad graph
        raise FormatError(f"the ONNX graph built for this model is not valid: {e}") from None
    return proto


def export(
    model: Any,
    path: str | os.PathLike[str],
    *,
    opset: int = DEFAULT_OPSET,
    input_shape: Any = None,
) -> None:
    """Write ``model`` as an ONNX file at ``path`` (atomically).

    ``opset``: 17 (default) or newer. ``input_shape``: one sample's sizes (without the
    batch) when the first layer does not tell them (a model starting with a convolution);
    the batch axis is always dynamic (``"batch"``). Needs the ``onnx`` package.
    """
    from .._atomic import atomic_write

    proto = to_model_proto(model, opset=opset, input_shape=input_shape)
    data = proto.SerializeToString()
    with atomic_write(os.fspath(path)) as f:
        f.write(data)
