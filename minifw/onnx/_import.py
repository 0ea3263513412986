"""ONNX -> minifw: a graph that is a chain of supported operators becomes a ``Sequential``.

Two passes. The *plan* walks the nodes in order with only the graph's structure and the
tensors' declared dims: it follows the one activation tensor from the graph input to the
graph output, maps each operator (or pattern: ``MatMul`` + ``Add``, ``Greater`` + ``Cast``,
the ``Shape``/``Gather``/``Unsqueeze``/``Concat``/``Reshape`` flatten of ``x.view(x.size(0),
-1)``) onto a minifw layer, and refuses anything else with :class:`minifw.FormatError` naming
the first node it cannot take. Only small integer constants (shapes, axes) are read here.
Then every weight's declared size is checked against the bytes present, and only then
are the weights read and the layers built.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import FormatError
from . import _proto as P

#: how the refusal message describes an operator that needs a pattern
_NOTES = {
    "Add": "Add (the bias after a MatMul)",
    "Reshape": "Reshape (a flatten of the batch)",
    "ReduceMean": "ReduceMean (over H and W)",
    "Dropout": "Dropout (inference)",
    "Greater": "Greater + Cast (a step)",
    "Cast": "Cast (to the same float type)",
}
#: operators allowed on the side, computing a shape for ``Reshape``
SHAPE_OPS = (
    "Shape",
    "Constant",
    "Gather",
    "Unsqueeze",
    "Squeeze",
    "Concat",
    "Slice",
    "Cast",
    "Identity",
)
MIN_OPSET, MAX_OPSET = 7, 25


def chain_ops() -> list[str]:
    """The operators that can be part of an imported chain."""
    return sorted(_HANDLERS)


def supported_text() -> str:
    return (
        "minifw imports a single chain from one float input to one output, of: "
        + ", ".join(_NOTES.get(op, op) for op in chain_ops())
        + "; with constant weights; and shape computations of "
        + ", ".join(SHAPE_OPS)
    )


Dim = int | str | None  # an int, "N" (the batch size) or None (unknown)


@dataclass
class _Step:
    layer: str  # a class name in minifw's LAYERS
    config: dict[str, Any]
    node: P.Node
    params: dict[str, tuple[P.Tensor, Callable[[np.ndarray], np.ndarray]]] = field(
        default_factory=dict
    )
    from_matmul: bool = False


def _keep(a: np.ndarray) -> np.ndarray:
    return a


def _transpose(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a.T)


def _flat(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a.reshape(-1))


class _Refused(Exception):
    pass


class Planner:
    """The first pass: maps the graph onto layer steps (see the module docstring)."""

    def __init__(self, model: P.Model, buf: P.Buf, base_dir: str | None) -> None:
        self.model = model
        self.buf = buf
        self.file = buf.file
        self.base_dir = base_dir
        g = model.graph
        self.graph = g
        self.consts: dict[str, P.Tensor] = dict(g.initializers)
        self.ints: dict[str, tuple[tuple[Dim, ...], bool]] = {}  # name -> (values, scalar)
        self.data: dict[str, tuple[Dim, ...]] = {}  # activation tensors and their shapes
        self.steps: list[_Step] = []
        self.pending_step: P.Node | None = None  # a Greater waiting for its Cast
        self.needs_flatten: P.Node | None = None  # a GlobalAveragePool waiting for a flatten
        self.opset = self._opset()
        self.float_type = P.FLOAT
        self.fixed_batch: int | None = None
        self.current = ""

    # -- errors --------------------------------------------------------------------------
    def fail(self, what: str) -> FormatError:
        return FormatError(f"{self.file}: {what}")

    def refuse(self, node: P.Node, why: str) -> FormatError:
        return FormatError(
            f"{self.file}: {node.describe()} cannot be imported: {why}. {supported_text()}"
        )

    # -- header ----------------------------------------------------------------------------
    def _opset(self) -> int:
        ops = self.model.opsets
        v = ops.get("", ops.get("ai.onnx"))
        if v is None:
            v = 1 if not ops else None
        if v is None or not MIN_OPSET <= v <= MAX_OPSET:
            raise self.fail(
                f"ONNX opset {v} of the default domain is not supported (minifw reads opsets "
                f"{MIN_OPSET} to {MAX_OPSET})"
            )
        return v

    def _input(self) -> None:
        g = self.graph
        if self.model.functions:
            raise self.fail("the model defines local functions, which minifw does not import")
        if g.sparse:
            raise self.fail("the graph has sparse initializers, which minifw does not import")
        real = [v for v in g.inputs if v.name not in g.initializers]
        if len(real) != 1:
            raise self.fail(
                f"the graph has {len(real)} inputs {[v.name for v in real]}; minifw imports "
                "a chain with exactly one input"
            )
        if len(g.outputs) != 1:
            raise self.fail(
                f"the graph has {len(g.outputs)} outputs {[v.name for v in g.outputs]}; "
                "minifw imports a chain with exactly one output"
            )
        v = real[0]
        if v.elem_type not in (P.FLOAT, P.DOUBLE):
            raise self.fail(
                f"the graph input {v.name!r} has element type "
                f"{P.DTYPE_NAMES.get(v.elem_type or 0, v.elem_type)}; minifw takes FLOAT or "
                "DOUBLE"
            )
        if v.shape is None or not v.shape:
            raise self.fail(
                f"the graph input {v.name!r} has no shape; minifw needs its rank (the first "
                "axis is the batch)"
            )
        dims: list[Dim] = ["N"]
        for d in v.shape[1:]:
            if isinstance(d, int) and d > 0:
                dims.append(d)
            elif isinstance(d, int):
                raise self.fail(f"the graph input {v.name!r} has a dimension {d}")
            else:
                dims.append(None)
        self.float_type = v.elem_type
        self.fixed_batch = v.shape[0] if isinstance(v.shape[0], int) else None
        self.data[v.name] = tuple(dims)
        self.current = v.name

    # -- constants -------------------------------------------------------------------------
    def weight(self, node: P.Node, k: int, what: str, ndim: int | tuple[int, ...]) -> P.Tensor:
        """The constant float tensor at input ``k`` of ``node`` (not read)."""
        name = node.inputs[k] if k < len(node.inputs) else ""
        if not name:
            raise self.refuse(node, f"its {what} (input {k}) is missing")
        t = self.consts.get(name)
        if t is None:
            raise self.refuse(
                node,
                f"its {what} {name!r} is not a constant (an initializer or Constant node); "
                "minifw needs constant weights",
            )
        if t.data_type != self.float_type:
            raise self.refuse(
                node,
                f"its {what} {name!r} is {t.type_name} but the input is "
                f"{P.DTYPE_NAMES[self.float_type]}",
            )
        allowed = (ndim,) if isinstance(ndim, int) else ndim
        if len(t.dims) not in allowed:
            raise self.refuse(node, f"its {what} {name!r} has shape {t.dims}")
        return t

    def int_values(self, node: P.Node, name: str) -> tuple[tuple[Dim, ...], bool]:
        if name in self.ints:
            return self.ints[name]
        t = self.consts.get(name)
        if t is None or t.data_type not in (P.INT64, P.INT32):
            raise self.refuse(node, f"its input {name!r} is not a constant integer tensor")
        if t.count > 64 or len(t.dims) > 1:
            raise self.refuse(node, f"its integer input {name!r} has shape {t.dims}")
        arr = P.tensor_array(t, self.buf, self.base_dir)
        vals = (tuple(int(v) for v in arr.reshape(-1)), len(t.dims) == 0)
        self.ints[name] = vals
        return vals

    def const_ints(self, node: P.Node, name: str, what: str) -> list[int]:
        vals, _ = self.int_values(node, name)
        if not all(isinstance(v, int) for v in vals):
            raise self.refuse(node, f"its {what} must be constant")
        return [int(v) for v in vals]  # type: ignore[arg-type]

    def attr(self, node: P.Node, name: str, default: Any = None) -> Any:
        a = node.attrs.get(name)
        if a is None:
            return default
        v = a.value()
        return default if v is None else v

    def attr_ints(self, node: P.Node, name: str, default: list[int]) -> list[int]:
        a = node.attrs.get(name)
        if a is None:
            return default
        if a.type != 7:
            raise self.refuse(node, f"attribute {name!r} should be a list of ints")
        return list(a.ints)

    # -- the walk --------------------------------------------------------------------------
    def plan(self) -> list[_Step]:
        self._input()
        for node in self.graph.nodes:
            self._node(node)
        if self.pending_step is not None:
            raise self.refuse(self.pending_step, "Greater is supported only followed by Cast")
        if self.needs_flatten is not None:
            raise self.refuse(
                self.needs_flatten,
                f"{self.needs_flatten.op_type} is supported only followed by a flatten",
            )
        out = self.graph.outputs[0].name
        if out != self.current:
            raise self.fail(
                f"the graph output {out!r} is not the end of the chain of layers (which ends "
                f"at {self.current!r}); minifw imports a single chain"
            )
        return self.steps

    def _node(self, node: P.Node) -> None:
        if node.domain not in ("", "ai.onnx"):
            raise self.refuse(node, f"operator domain {node.domain!r} is not ONNX's own")
        if any(a.graph for a in node.attrs.values()):
            raise self.refuse(node, "it has a subgraph (control flow)")
        if not node.outputs or not node.outputs[0]:
            raise self.refuse(node, "it has no output")
        for o in node.outputs:
            if o and (o in self.data or o in self.consts or o in self.ints):
                raise self.refuse(node, f"its output {o!r} was already defined")
        op = node.op_type
        if op == "Constant":
            self._constant(node)
            return
        data_ins = [i for i in node.inputs if i in self.data]
        if not data_ins:
            if op not in SHAPE_OPS:
                raise self.refuse(
                    node,
                    f"operator {op!r} is not supported"
                    if op not in _HANDLERS
                    else "none of its inputs comes from the model's input",
                )
            self._shape_op(node)
            return
        if op == "Shape":
            self._shape_of(node)
            return
        if len(data_ins) > 1:
            raise self.refuse(node, f"it joins two activations {data_ins} (a branch in the graph)")
        x = data_ins[0]
        if x != self.current:
            raise self.refuse(
                node,
                f"it reads {x!r}, which another node already consumed (a branch in the graph)",
            )
        handler = _HANDLERS.get(op)
        if handler is None:
            raise self.refuse(node, f"operator {op!r} is not supported")
        if self.pending_step is not None and op != "Cast":
            raise self.refuse(self.pending_step, "Greater is supported only followed by Cast")
        if self.needs_flatten is not None:
            if op not in ("Flatten", "Reshape", "Identity", "Dropout"):
                raise self.refuse(
                    self.needs_flatten,
                    f"{self.needs_flatten.op_type} is supported only followed by a flatten",
                )
            if op in ("Flatten", "Reshape"):
                self.needs_flatten = None
                shape = _HANDLERS[op](self, node, self.data[x])
                if self.steps and self.steps[-1].node is node:
                    self.steps.pop()  # GlobalAvgPool2D's output is already flat
                self.data[node.outputs[0]] = shape
                self.current = node.outputs[0]
                return
        if op not in ("Add",) and node.inputs[0] != x:
            raise self.refuse(node, "the activation is not its first input")
        shape = handler(self, node, self.data[x])
        self.data[node.outputs[0]] = shape
        self.current = node.outputs[0]

    # -- constants and shape computations --------------------------------------------------
    def _constant(self, node: P.Node) -> None:
        out = node.outputs[0]
        if len(node.attrs) != 1:
            raise self.refuse(node, "a Constant needs exactly one value attribute")
        ((name, a),) = node.attrs.items()
        if name == "value" and a.t is not None:
            self.consts[out] = a.t
        elif name == "value_int" and a.i is not None:
            self.ints[out] = ((a.i,), True)
        elif name == "value_ints":
            self.ints[out] = (tuple(a.ints), False)
        else:
            raise self.refuse(node, f"Constant attribute {name!r} is not supported")

    def _shape_of(self, node: P.Node) -> None:
        shape = self.data[node.inputs[0]]
        start = self.attr(node, "start", 0)
        end = self.attr(node, "end", None)
        r = len(shape)
        s = max(0, min(r, start + r if start < 0 else start))
        e = r if end is None else max(0, min(r, end + r if end < 0 else end))
        self.ints[node.outputs[0]] = (shape[s:e], False)

    def _shape_op(self, node: P.Node) -> None:
        op = node.op_type
        ins = node.inputs
        if not ins or not ins[0]:
            raise self.refuse(node, "it has no input")
        vals, scalar = self.int_values(node, ins[0])
        out: tuple[tuple[Dim, ...], bool]
        if op in ("Identity", "Cast"):
            if op == "Cast" and self.attr(node, "to") not in (P.INT64, P.INT32):
                raise self.refuse(node, "a Cast of a shape must be to an integer type")
            out = (vals, scalar)
        elif op == "Gather":
            if self.attr(node, "axis", 0) != 0 or scalar or len(ins) < 2:
                raise self.refuse(node, "a Gather of a shape must take axis 0 of a vector")
            idx, idx_scalar = self.int_values(node, ins[1])
            picked: list[Dim] = []
            for i in idx:
                if not isinstance(i, int) or not -len(vals) <= i < len(vals):
                    raise self.refuse(node, f"index {i} is out of range for {len(vals)} values")
                picked.append(vals[i])
            out = (tuple(picked), idx_scalar)
        elif op == "Unsqueeze":
            axes = (
                self.attr_ints(node, "axes", [])
                if self.opset < 13
                else (self.const_ints(node, ins[1], "axes") if len(ins) > 1 else [])
            )
            if not scalar or axes not in ([0], [-1]):
                raise self.refuse(node, "an Unsqueeze of a shape must turn a scalar into a vector")
            out = (vals, False)
        elif op == "Squeeze":
            if scalar or len(vals) != 1:
                raise self.refuse(node, "a Squeeze of a shape must take a 1-element vector")
            out = (vals, True)
        elif op == "Concat":
            if self.attr(node, "axis", 0) not in (0, -1):
                raise self.refuse(node, "a Concat of shapes must use axis 0")
            joined: list[Dim] = []
            for name in ins:
                v, sc = self.int_values(node, name)
                if sc:
                    raise self.refuse(node, "a Concat of shapes takes vectors")
                joined += v
            out = (tuple(joined), False)
        elif op == "Slice":
            if scalar:
                raise self.refuse(node, "a Slice of a shape takes a vector")
            if self.opset < 10:
                starts = self.attr_ints(node, "starts", [])
                ends = self.attr_ints(node, "ends", [])
                axes = self.attr_ints(node, "axes", [0])
                steps = [1]
            else:
                if len(ins) < 3:
                    raise self.refuse(node, "a Slice needs starts and ends")
                starts = self.const_ints(node, ins[1], "starts")
                ends = self.const_ints(node, ins[2], "ends")
                axes = self.const_ints(node, ins[3], "axes") if len(ins) > 3 and ins[3] else [0]
                steps = self.const_ints(node, ins[4], "steps") if len(ins) > 4 and ins[4] else [1]
            if len(starts) != 1 or len(ends) != 1 or axes not in ([0], [-1]) or steps != [1]:
                raise self.refuse(node, "a Slice of a shape must slice its one axis by step 1")
            out = (tuple(vals[slice(starts[0], ends[0])]), False)
        else:  # Shape of a constant, Constant handled elsewhere
            raise self.refuse(node, f"operator {op!r} on constants is not supported")
        self.ints[node.outputs[0]] = out

    def add(self, step: _Step) -> None:
        self.steps.append(step)


# -- handlers: (planner, node, input shape) -> output shape --------------------------------


def _rank(p: Planner, node: P.Node, shape: tuple[Dim, ...], ranks: tuple[int, ...]) -> None:
    if len(shape) not in ranks:
        raise p.refuse(
            node, f"its input has rank {len(shape)} (shape {_fmt(shape)}); it needs {ranks}"
        )


def _fmt(shape: tuple[Dim, ...]) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"


def _gemm(p: Planner, node: P.Node, shape: tuple[Dim, ...]) -> tuple[Dim, ...]:
    _rank(p, node, shape, (2,))
    if p.attr(node, "transA", 0) != 0:
        raise p.refuse(node, "transA=1 is not supported")
    trans_b = p.attr(node, "transB", 0)
    w = p.weight(node, 1, "weight B", 2)
    n_in, n_out = (w.dims[1], w.dims[0]) if trans_b else w.dims
    has_c = len(node.inputs) > 2 and bool(node.inputs[2])
    if p.attr(node, "alpha", 1.0) != 1.0 or (has_c and p.attr(node, "beta", 1.0) != 1.0):
        raise p.refuse(node, "alpha and beta other than 1 are not supported")
    if shape[-1] is not None and shape[-1] != n_in:
        raise p.refuse(node, f"its input has {shape[-1]} features but B is {w.dims}")
    step = _Step("Dense", {"in_features": n_in, "out_features": n_out, "bias": has_c}, node)
    step.params["weight"] = (w, _transpose if trans_b else _keep)
    if has_c:
        c = p.weight(node, 2, "bias C", (1, 2))
        if c.dims not in ((n_out,), (1, n_out)):
            raise p.refuse(node, f"bias C has shape {c.dims}; minifw needs ({n_out},)")
        step.params["bias"] = (c, _flat)
    p.add(step)
    return (shape[0], n_out)


def _matmul(p: Planner, node: P.Node, shape: tuple[Dim, ...]) -> tuple[Dim, ...]:
    if len(shape) < 2:
        raise p.refuse(node, "its input has no feature axis")
    w = p.weight(node, 1, "weight B", 2)
    n_in, n_out = w.dims
    if shape[-1] is not None and shape[-1] != n_in:
        raise p.refuse(node, f"its input has {shape[-1]} features but B is {w.dims}")
    step = _Step("Dense", {"in_features": n_in, "out_features": n_out, "bias": False}, node)
    step.params["weight"] = (w, _keep)
    step.from_matmul = True
    p.add(step)
    return (*shape[:-1], n_out)


def _add(p: Planner, node: P.Node, shape: tuple[Dim, ...]) -> tuple[Dim, ...]:
    prev = p.steps[-1] if p.steps else None
    if (
        prev is None
        or not prev.from_matmul
        or prev.config["bias"]
        or p.data.get(prev.node.outputs[0]) is None
        or prev.node.outputs[0] != p.current
        or len(node.inputs) != 2
    ):
        raise p.refuse(node, "Add is supported only as the bias right after a MatMul")
    k = 1 if node.inputs[0] == p.current else 0
    if node.inputs[k] == p.current:
        raise p.refuse(node, "it adds the activation to itself")
    n_out = prev.config["out_features"]
    c = p.weight(node, k, "bias", tuple(range(1, len(shape) + 1)))
    if math.prod(c.dims) != n_out or (c.dims and c.dims[-1] != n_out):
        raise p.refuse(node, f"its bias has shape {c.dims}; minifw needs ({n_out},)")
    prev.config["bias"] = True
    prev.params["bias"] = (c, _flat)
    prev.from_matmul = False
    return shape


def _activation(layer: str) -> Callable[[Planner, P.Node, tuple[Dim, ...]], tuple[Dim, ...]]:
    def handler(p: Planner, node: P.Node, shape: tuple[Dim, ...]) -> tuple[Dim, ...]:
        if len(node.inputs) != 1:
            raise p.refuse(node, "it has extra inputs")
        p.add(_Step(layer, {}, node))
        return shape

    return handler


def _softmax(p: Planner, node: P.Node, shape: tuple[Dim, ...]) -> tuple[Dim, ...]:
    r = len(shape)
    axis = p.attr(node, "axis", 1 if p.opset < 13 else -1)
    if not -r <= axis < r:
        raise p.refuse(node, f"axis {axis} is out of range for rank {r}")
    if p.opset < 13:  # softmax over the flattened axes from `axis` on
        if axis % r != r - 1:
            raise p.refuse(node, f"before opset 13, axis {axis} of rank {r} spans several axes")
        axis = -1
    p.add(_Step("Softmax", {"axis": int(axis)}, node))
    return shape


def _flatten_shape(shape: tuple[Dim, ...]) -> tuple[Dim, ...]:
    rest = shape[1:]
    if any(d is None for d in rest):
        return (shape[0], None)
    return (shape[0], math.prod(rest))  # type: ignore[arg-type]


def _flatten(p: Planner, node: P.Node, shape: tuple[Dim, ...]) -> tuple[Dim, ...]:
    r = len(shape)
    axis = p.attr(node, "axis", 1)
    if axis < 0:
        axis += r
    if axis != 1 or r < 2:
        raise p.refuse(
            node,
            f"Flatten axis {p.attr(node, 'axis', 1)} of rank {r}: minifw "
            "flattens every axis after the batch (axis 1)",
        )
    p.add(_Step("Flatten", {}, node))
    return _flatten_shape(shape)


def _reshape(p: Planner, node: P.Node, shape: tuple[Dim, ...]) -> tuple[Dim, ...]:
    if len(node.inputs) != 2:
        raise p.refuse(node, "a Reshape needs a shape input")
    target, scalar = p.int_values(node, node.inputs[1])
    allowzero = p.attr(node, "allowzero", 0) if p.opset >= 14 else 0
    if scalar:
        raise p.refuse(node, "its shape is a scalar")
    rest = shape[1:]
    known = None if any(d is None for d in rest) else math.prod(rest)  # type: ignore[arg-type]

    def batch(v: Dim) -> bool:  # an entry that keeps the batch axis
        return v == "N" or (v == 0 and not allowzero) or (v is not None and v == p.fixed_batch)

    t = list(target)
    if len(t) == 2 and len(shape) >= 2:
        first, second = t
        fixed = isinstance(second, int) and second > 0 and (known is None or second == known)
        if (batch(first) and (second == -1 or fixed)) or (first == -1 and fixed):
            p.add(_Step("Flatten", {}, node))
            return (shape[0], known if second == -1 else second)
    if len(t) == len(shape) and all(
        a == b or (a == 0 and not allowzero) or (i == 0 and (a == -1 or batch(a)))
        for i, (a, b) in enumerate(zip(t, shape, strict=True))
    ):
        if all(d is not None for d in shape[1:]):
            return shape  # a Reshape to the same shape: nothing to do
    raise p.refuse(
        node,
        f"Reshape of {_fmt(shape)} to {[('N' if v == 'N' else v) for v in target]} is not a "
        "flatten of the batch (a dynamic shape minifw cannot take)",
    )


def _identity(p: Planner, node: P.Node, shape: tuple[Dim, ...]) -> tuple[Dim, ...]:
    p.add(_Step("Identity", {}, node))
    return shape


def _dropout(p: Planner, node: P.Node, shape: tuple[Dim, ...]) -> tuple[Dim, ...]:
    if len(node.inputs) > 2 and node.inputs[2]:
        name = node.inputs[2]
        t = p.consts.get(name)
        if name in p.ints:
            mode = p.ints[name][0]
        elif t is not None and t.count == 1 and t.data_type == 9:  # BOOL
            mode = tuple(int(v) for v in P.tensor_array(t, p.buf, p.base_dir).reshape(-1))
        else:
            raise p.refuse(node, "its training_mode is not a constant boolean")
        if any(mode):
            raise p.refuse(node, "training_mode is true (minifw imports inference graphs)")
    return shape  # inference: the identity


def _pads(p: Planner, node: P.Node, nd: int = 2) -> tuple[int, int]:
    """ONNX ``pads`` ``[top, left, bottom, right]`` as minifw's symmetric ``(ph, pw)``."""
    auto = p.attr(node, "auto_pad", b"NOTSET")
    pads = p.attr_ints(node, "pads", [0] * 2 * nd)
    if auto not in (b"NOTSET", b"VALID") or (auto == b"VALID" and any(pads)):
        raise p.refuse(node, f"auto_pad {auto.decode(errors='replace')!r} is not supported")
    if len(pads) != 2 * nd or pads[:nd] != pads[nd:] or min(pads) < 0:
        raise p.refuse(node, f"pads {pads}: minifw pads the same on both sides")
    return pads[0], pads[1]


def _window(p: Planner, node: P.Node, kernel: list[int]) -> tuple[list[int], tuple[int, int]]:
    strides = p.attr_ints(node, "strides", [1, 1])
    dil = p.attr_ints(node, "dilations", [1, 1])
    if len(kernel) != 2 or len(strides) != 2 or any(d != 1 for d in dil):
        raise p.refuse(node, "only 2-D windows without dilation are supported")
    if p.attr(node, "ceil_mode", 0):
        raise p.refuse(node, "ceil_mode=1 is not supported")
    return strides, _pads(p, node)


def _spatial(
    shape: tuple[Dim, ...], c: Dim, k: list[int], s: list[int], pad: tuple[int, int]
) -> tuple[Dim, ...]:
    hw = [
        None if not isinstance(d, int) else (d + 2 * pad[i] - k[i]) // s[i] + 1
        for i, d in enumerate(shape[2:])
    ]
    return (shape[0], c, *hw)


def _conv(p: Planner, node: P.Node, shape: tuple[Dim, ...]) -> tuple[Dim, ...]:
    _rank(p, node, shape, (4,))
    w = p.weight(node, 1, "weight W", 4)
    f, c, kh, kw = w.dims
    if p.attr(node, "group", 1) != 1:
        raise p.refuse(node, "grouped convolutions are not supported")
    kernel = p.attr_ints(node, "kernel_shape", [kh, kw])
    if kernel != [kh, kw]:
        raise p.refuse(node, f"kernel_shape {kernel} disagrees with W {w.dims}")
    if shape[1] is not None and shape[1] != c:
        raise p.refuse(node, f"its input has {shape[1]} channels but W is {w.dims}")
    strides, pad = _window(p, node, kernel)
    has_b = len(node.inputs) > 2 and bool(node.inputs[2])
    config = {
        "in_channels": c,
        "out_channels": f,
        "kernel_size": [kh, kw],
        "stride": strides,
        "padding": list(pad),
        "bias": has_b,
    }
    step = _Step("Conv2D", config, node)
    step.params["weight"] = (w, _keep)
    if has_b:
        b = p.weight(node, 2, "bias B", 1)
        if b.dims != (f,):
            raise p.refuse(node, f"bias B has shape {b.dims}; expected ({f},)")
        step.params["bias"] = (b, _keep)
    p.add(step)
    return _spatial(shape, f, kernel, strides, pad)


def _pool(layer: str) -> Callable[[Planner, P.Node, tuple[Dim, ...]], tuple[Dim, ...]]:
    def handler(p: Planner, node: P.Node, shape: tuple[Dim, ...]) -> tuple[Dim, ...]:
        _rank(p, node, shape, (4,))
        kernel = p.attr_ints(node, "kernel_shape", [])
        strides, pad = _window(p, node, kernel)
        if layer == "MaxPool2D" and p.attr(node, "storage_order", 0):
            raise p.refuse(node, "storage_order=1 is not supported")
        if layer == "AvgPool2D" and any(pad) and not p.attr(node, "count_include_pad", 0):
            raise p.refuse(
                node, "count_include_pad=0 with padding is not supported (minifw counts the pad)"
            )
        config = {"kernel_size": kernel, "stride": strides, "padding": list(pad)}
        p.add(_Step(layer, config, node))
        return _spatial(shape, shape[1], kernel, strides, pad)

    return handler


def _global_avg(p: Planner, node: P.Node, shape: tuple[Dim, ...]) -> tuple[Dim, ...]:
    _rank(p, node, shape, (4,))
    p.add(_Step("GlobalAvgPool2D", {}, node))
    p.needs_flatten = node  # minifw's output is (N, C): ONNX's (N, C, 1, 1) must be flattened
    return (shape[0], shape[1], 1, 1)


def _reduce_mean(p: Planner, node: P.Node, shape: tuple[Dim, ...]) -> tuple[Dim, ...]:
    """``ReduceMean`` over the two spatial axes (PyTorch's ``AdaptiveAvgPool2d(1)``)."""
    _rank(p, node, shape, (4,))
    if p.opset < 18:
        axes = p.attr_ints(node, "axes", [])
    else:
        axes = p.const_ints(node, node.inputs[1], "axes") if len(node.inputs) > 1 else []
    if sorted(a % 4 for a in axes) != [2, 3]:
        raise p.refuse(node, f"ReduceMean over axes {axes}: only the spatial axes (2, 3)")
    p.add(_Step("GlobalAvgPool2D", {}, node))
    if p.attr(node, "keepdims", 1):
        p.needs_flatten = node
        return (shape[0], shape[1], 1, 1)
    return (shape[0], shape[1])


def _short(v: float) -> float:
    """A float attribute (stored as float32) as the shortest decimal that gives the same
    float32: 1e-3, not 0.0010000000474974513."""
    return float(np.format_float_positional(np.float32(v), unique=True, trim="-"))


def _batchnorm(p: Planner, node: P.Node, shape: tuple[Dim, ...]) -> tuple[Dim, ...]:
    if len(shape) < 2:
        raise p.refuse(node, "its input has no channel axis")
    if p.attr(node, "training_mode", 0) or not p.attr(node, "spatial", 1):
        raise p.refuse(node, "only inference-mode, spatial batch normalization is supported")
    if len([o for o in node.outputs if o]) > 1:
        raise p.refuse(node, "the running-statistics outputs (training) are not supported")
    tensors = [
        p.weight(node, k, what, 1) for k, what in enumerate(("", "scale", "B", "mean", "var")) if k
    ]
    c = tensors[0].dims[0]
    if any(t.dims != (c,) for t in tensors) or (shape[1] is not None and shape[1] != c):
        raise p.refuse(node, f"scale, B, mean and var must all be ({shape[1]},)")
    momentum = _short(p.attr(node, "momentum", 0.9))
    config = {
        "num_features": c,
        "eps": _short(p.attr(node, "epsilon", 1e-5)),
        "momentum": _short(min(1.0, max(0.0, 1.0 - momentum))),  # ONNX weighs the old one
    }
    step = _Step("BatchNorm", config, node)
    for name, t in zip(("weight", "bias", "running_mean", "running_var"), tensors, strict=True):
        step.params[name] = (t, _keep)
    p.add(step)
    return shape


def _greater(p: Planner, node: P.Node, shape: tuple[Dim, ...]) -> tuple[Dim, ...]:
    t = p.weight(node, 1, "threshold", (0, 1))
    if t.count != 1 or P.tensor_array(t, p.buf, p.base_dir).reshape(-1)[0] != 0:
        raise p.refuse(node, "Greater is supported only against 0 (a step)")
    p.pending_step = node
    return shape


def _cast(p: Planner, node: P.Node, shape: tuple[Dim, ...]) -> tuple[Dim, ...]:
    to = p.attr(node, "to")
    if to != p.float_type:
        raise p.refuse(node, f"a Cast to {P.DTYPE_NAMES.get(to, to)} changes the float type")
    if p.pending_step is not None:
        p.add(_Step("Step", {}, p.pending_step))
        p.pending_step = None
    return shape


_HANDLERS: dict[str, Callable[[Planner, P.Node, tuple[Dim, ...]], tuple[Dim, ...]]] = {
    "Gemm": _gemm,
    "MatMul": _matmul,
    "Add": _add,
    "Relu": _activation("ReLU"),
    "Sigmoid": _activation("Sigmoid"),
    "Tanh": _activation("Tanh"),
    "Softmax": _softmax,
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Identity": _identity,
    "Dropout": _dropout,
    "Greater": _greater,
    "Cast": _cast,
    "Conv": _conv,
    "MaxPool": _pool("MaxPool2D"),
    "AveragePool": _pool("AvgPool2D"),
    "GlobalAveragePool": _global_avg,
    "ReduceMean": _reduce_mean,
    "BatchNormalization": _batchnorm,
}


def register_handler(
    op: str, fn: Callable[[Planner, P.Node, tuple[Dim, ...]], tuple[Dim, ...]]
) -> None:
    """Install the import mapping of ``op`` (used for the convolution layers)."""
    _HANDLERS[op] = fn


# -- building ------------------------------------------------------------------------------


def _build(steps: list[_Step], planner: Planner, backend: str | None) -> Any:
    from .. import backend as _backend
    from ..layers import Sequential
    from ..layers.module import LAYERS

    buf, base = planner.buf, planner.base_dir
    # every weight's declared size against the bytes present, before anything is read
    for s in steps:
        for t, _ in s.params.values():
            P.check_size(t, buf, base)
    dtype = "float64" if planner.float_type == P.DOUBLE else "float32"
    ctx = _backend.use(backend) if backend is not None else contextlib.nullcontext()
    layers = []
    with ctx, _quiet_rng():  # building draws initial weights: keep the user's stream
        for s in steps:
            cls = LAYERS.get(s.layer)
            if cls is None:
                raise planner.refuse(s.node, f"this minifw has no {s.layer} layer")
            config = dict(s.config)
            if s.params:
                config["dtype"] = dtype
            try:
                layer = cls(**config)
            except (TypeError, ValueError) as e:
                raise planner.refuse(s.node, f"cannot build {s.layer}({config}): {e}") from None
            for name, (t, fix) in s.params.items():
                arr = fix(P.tensor_array(t, buf, base))
                try:
                    layer.set_param(name, arr)
                except (ValueError, AttributeError) as e:
                    raise planner.refuse(s.node, f"{name}: {e}") from None
            layers.append(layer)
        if not layers:
            layers.append(LAYERS["Identity"]())
        return Sequential(*layers)


@contextlib.contextmanager
def _quiet_rng() -> Iterator[None]:
    from .. import _random

    saved = _random._rng
    _random._rng = np.random.default_rng(0)
    try:
        yield
    finally:
        _random._rng = saved


def import_model(data: bytes, file: str, base_dir: str | None, backend: str | None) -> Any:
    """Parse, plan, check and build (see the module docstring)."""
    buf = P.Buf(data, file)
    model = P.parse_model(buf)
    planner = Planner(model, buf, base_dir)
    steps = planner.plan()
    return _build(steps, planner, backend)


def load(path: str | os.PathLike[str], *, backend: str | None = None) -> Any:
    """The ONNX model at ``path`` as a minifw ``Sequential`` (see :mod:`minifw.onnx`)."""
    file = os.fspath(path)
    if os.path.isdir(file):
        raise FormatError(f"{file}: is a directory, not an ONNX model")
    with open(file, "rb") as fh:
        data = fh.read()
    return import_model(data, file, os.path.dirname(os.path.abspath(file)), backend)
