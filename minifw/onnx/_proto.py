"""A small, strict reader of the protobuf wire format for the ONNX messages minifw reads.

No dependency: neither ``onnx`` nor ``protobuf`` is needed to import a model. Only the
fields minifw uses are decoded (``ModelProto``, ``OperatorSetIdProto``, ``GraphProto``,
``NodeProto``, ``AttributeProto``, ``TensorProto``, ``ValueInfoProto`` and its type);
every other field is skipped after its bounds are checked.

Safety: every length is checked against the bytes that remain before anything is sliced;
repeated fields have caps (a chain of layers has few nodes); tensors are only *described*
here (dims, type, where their bytes lie) and their data is read later by
:func:`tensor_array`, after the declared size has been checked against the bytes present
(in the model file or in an external-data file inside the model's folder). Nothing is
allocated beyond the file's size and the declared tensor sizes so checked. Every defect is
a :class:`minifw.FormatError`.
"""

from __future__ import annotations

import math
import os
import stat
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import FormatError

# wire types
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5

MAX_NODES = 10_000
MAX_TENSORS = 10_000
MAX_VALUES = 10_000
MAX_IO = 64  # inputs / outputs / attributes of one node
MAX_DIMS = 8
MAX_LIST = 4096  # ints / floats / strings of one attribute
MAX_STRING = 1 << 16  # names, op types, attribute strings

# TensorProto.DataType -> numpy dtype (little-endian on disk)
DTYPES: dict[int, np.dtype[Any]] = {
    1: np.dtype("<f4"),  # FLOAT
    2: np.dtype("u1"),  # UINT8
    3: np.dtype("i1"),  # INT8
    5: np.dtype("<i2"),  # INT16
    6: np.dtype("<i4"),  # INT32
    7: np.dtype("<i8"),  # INT64
    9: np.dtype("?"),  # BOOL
    11: np.dtype("<f8"),  # DOUBLE
}
DTYPE_NAMES = {
    0: "UNDEFINED",
    1: "FLOAT",
    2: "UINT8",
    3: "INT8",
    4: "UINT16",
    5: "INT16",
    6: "INT32",
    7: "INT64",
    8: "STRING",
    9: "BOOL",
    10: "FLOAT16",
    11: "DOUBLE",
    12: "UINT32",
    13: "UINT64",
    16: "BFLOAT16",
}
FLOAT, DOUBLE, INT64, INT32 = 1, 11, 7, 6


class Buf:
    """The model file's bytes and its name (for messages)."""

    def __init__(self, data: bytes, file: str) -> None:
        self.data = data
        self.view = memoryview(data)
        self.file = file

    def fail(self, what: str) -> FormatError:
        return FormatError(f"{self.file}: {what}")


def _varint(buf: Buf, pos: int, end: int, what: str) -> tuple[int, int]:
    data = buf.data
    result = 0
    shift = 0
    while True:
        if pos >= end:
            raise buf.fail(f"{what}: truncated (a number runs past the end of its message)")
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise buf.fail(f"{what}: malformed number (more than 10 bytes)")


def _signed(v: int) -> int:
    """An int64 as stored in a varint (two's complement in 64 bits)."""
    v &= (1 << 64) - 1
    return v - (1 << 64) if v >= 1 << 63 else v


Spec = dict[int, tuple[int, int]]  # field -> (wire type, max count; _ONE: singular)
_ONE = 0


def _fields(buf: Buf, span: tuple[int, int], what: str, spec: Spec) -> dict[int, list[Any]]:
    """The fields of one message in ``buf[start:end]`` that ``spec`` names: ints for varint
    and fixed fields, ``(start, end)`` for length-delimited ones. Others are skipped."""
    start, end = span
    out: dict[int, list[Any]] = {}
    pos = start
    val: Any
    while pos < end:
        key, pos = _varint(buf, pos, end, what)
        num, wt = key >> 3, key & 7
        if num == 0:
            raise buf.fail(f"{what}: malformed message (field number 0)")
        if wt == _VARINT:
            val, pos = _varint(buf, pos, end, what)
        elif wt == _I64:
            if pos + 8 > end:
                raise buf.fail(f"{what}: truncated (a fixed64 runs past the end)")
            val = int.from_bytes(buf.data[pos : pos + 8], "little")
            pos += 8
        elif wt == _I32:
            if pos + 4 > end:
                raise buf.fail(f"{what}: truncated (a fixed32 runs past the end)")
            val = int.from_bytes(buf.data[pos : pos + 4], "little")
            pos += 4
        elif wt == _LEN:
            n, pos = _varint(buf, pos, end, what)
            if n > end - pos:
                raise buf.fail(
                    f"{what}: truncated (field {num} declares {n:,} bytes, {end - pos:,} remain)"
                )
            val = (pos, pos + n)
            pos += n
        else:
            raise buf.fail(f"{what}: malformed message (wire type {wt} in field {num})")
        want = spec.get(num)
        if want is None:
            continue
        if want[0] != wt and wt != _LEN:  # a LEN value for a scalar field: packed
            raise buf.fail(f"{what}: field {num} has wire type {wt}, expected {want[0]}")
        if want[1] == _ONE:  # a singular field: the last occurrence wins
            out[num] = [val]
            continue
        lst = out.setdefault(num, [])
        if len(lst) >= want[1]:
            raise buf.fail(f"{what}: field {num} repeats more than {want[1]:,} times")
        lst.append(val)
    return out


def _str(buf: Buf, span: tuple[int, int], what: str) -> str:
    a, b = span
    if b - a > MAX_STRING:
        raise buf.fail(f"{what}: a string of {b - a:,} bytes (at most {MAX_STRING:,})")
    try:
        return buf.data[a:b].decode("utf-8")
    except UnicodeDecodeError:
        raise buf.fail(f"{what}: a string is not valid UTF-8") from None


def _one(f: dict[int, list[Any]], num: int, default: Any = None) -> Any:
    v = f.get(num)
    return v[-1] if v else default  # protobuf: the last occurrence wins


def _int(buf: Buf, f: dict[int, list[Any]], num: int, default: int, what: str) -> int:
    """A scalar integer field (FormatError when it came as bytes)."""
    v = _one(f, num, default)
    if isinstance(v, tuple):
        raise buf.fail(f"{what}: field {num} should be a number, not bytes")
    return int(v)


def _f32(v: int) -> float:
    return float(np.frombuffer(v.to_bytes(4, "little"), "<f4")[0])


# -- messages ------------------------------------------------------------------------------


@dataclass
class Tensor:
    name: str
    dims: tuple[int, ...]
    data_type: int
    where: str
    raw: tuple[int, int] | None = None  # raw_data's bytes in the file
    packed: tuple[int, int, int] | None = None  # (field, start, end) of float_data etc.
    external: dict[str, str] | None = None

    @property
    def count(self) -> int:
        return math.prod(self.dims)

    @property
    def type_name(self) -> str:
        return DTYPE_NAMES.get(self.data_type, str(self.data_type))


@dataclass
class Attribute:
    name: str
    type: int
    f: float | None = None
    i: int | None = None
    s: bytes | None = None
    t: Tensor | None = None
    floats: list[float] = field(default_factory=list)
    ints: list[int] = field(default_factory=list)
    graph: bool = False  # a subgraph (If, Loop, Scan): never supported

    def value(self) -> Any:
        # AttributeType: 1 FLOAT, 2 INT, 3 STRING, 4 TENSOR, 5 GRAPH, 6 FLOATS, 7 INTS
        return {
            1: self.f,
            2: self.i,
            3: self.s,
            4: self.t,
            6: self.floats,
            7: self.ints,
        }.get(self.type)


@dataclass
class Node:
    index: int
    name: str
    op_type: str
    domain: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Attribute]

    def describe(self) -> str:
        return f"node {self.index} ({self.op_type} {self.name!r})"


@dataclass
class Value:
    name: str
    elem_type: int | None  # None: not a tensor
    shape: tuple[int | str | None, ...] | None  # ints, dim_param names, None unknown


@dataclass
class Graph:
    name: str
    nodes: list[Node]
    initializers: dict[str, Tensor]
    inputs: list[Value]
    outputs: list[Value]
    sparse: int


@dataclass
class Model:
    ir_version: int
    opsets: dict[str, int]
    graph: Graph
    functions: int


_TENSOR: Spec = {
    1: (_VARINT, MAX_DIMS + 1),  # dims (unpacked)
    2: (_VARINT, _ONE),  # data_type
    4: (_LEN, _ONE),  # float_data (packed)
    5: (_LEN, _ONE),  # int32_data
    6: (_LEN, _ONE),  # string_data
    7: (_LEN, _ONE),  # int64_data
    8: (_LEN, _ONE),  # name
    9: (_LEN, _ONE),  # raw_data
    10: (_LEN, _ONE),  # double_data
    11: (_LEN, _ONE),  # uint64_data
    13: (_LEN, 64),  # external_data
    14: (_VARINT, _ONE),  # data_location
}


def _tensor(buf: Buf, span: tuple[int, int], where: str) -> Tensor:
    a, b = span
    f = _fields(buf, (a, b), where, _TENSOR)
    if any(isinstance(v, tuple) for v in f.get(1, [])) or any(
        not isinstance(v, tuple) for n in (4, 5, 7, 10, 11) for v in f.get(n, [])
    ):
        f[1] = _list_field(buf, f, 1, _VARINT, where)
        for n in (4, 5, 7, 10, 11):
            if any(not isinstance(v, tuple) for v in f.get(n, [])):
                raise buf.fail(f"{where}: tensor data field {n} is not packed (not supported)")
    name = _str(buf, _one(f, 8, (a, a)), where)
    where = f"tensor {name!r}" if name else where
    if len(f.get(1, [])) > MAX_DIMS:
        raise buf.fail(f"{where}: more than {MAX_DIMS} dimensions")
    dims = tuple(_signed(d) for d in f.get(1, []))
    if any(d < 0 for d in dims):
        raise buf.fail(f"{where}: negative dimension in {dims}")
    if any(d > 1 << 40 for d in dims) or math.prod(dims) > 1 << 50:
        raise buf.fail(f"{where}: declares {dims} elements, more than any file holds")
    t = Tensor(name, dims, _int(buf, f, 2, 0, where), where)
    if t.data_type not in DTYPES:
        raise buf.fail(f"{where}: element type {t.type_name} is not supported")
    if f.get(6):
        raise buf.fail(f"{where}: string data is not supported")
    location = _int(buf, f, 14, 0, where)
    if location == 1:
        entries: dict[str, str] = {}
        for span_e in f.get(13, []):
            ef = _fields(buf, span_e, where, {1: (_LEN, _ONE), 2: (_LEN, _ONE)})
            key = _str(buf, _one(ef, 1, (0, 0)), where)
            entries[key] = _str(buf, _one(ef, 2, (0, 0)), where)
        t.external = entries
        return t
    if location != 0:
        raise buf.fail(f"{where}: unknown data_location {location}")
    raw = _one(f, 9)
    if raw is not None:
        t.raw = raw
        return t
    for num in (4, 5, 7, 10, 11):
        spans = f.get(num)
        if spans:
            if len(spans) != 1:
                raise buf.fail(f"{where}: field {num} appears {len(spans)} times")
            t.packed = (num, *spans[0])
            break
    return t


def _packed_varints(buf: Buf, span: tuple[int, int], cap: int, what: str) -> list[int]:
    a, b = span
    out: list[int] = []
    pos = a
    while pos < b:
        if len(out) >= cap:
            raise buf.fail(f"{what}: more than {cap:,} packed values")
        v, pos = _varint(buf, pos, b, what)
        out.append(v)
    return out


def _list_field(buf: Buf, f: dict[int, list[Any]], num: int, wt: int, what: str) -> list[int]:
    """A repeated scalar field, packed or not: raw ints (varint values or fixed32 bits)."""
    out: list[int] = []
    for v in f.get(num, []):
        if isinstance(v, tuple):  # packed
            if wt == _VARINT:
                out += _packed_varints(buf, v, MAX_LIST - len(out), what)
            else:
                a, b = v
                if (b - a) % 4 or (b - a) // 4 > MAX_LIST - len(out):
                    raise buf.fail(f"{what}: bad packed float list")
                out += [int.from_bytes(buf.data[p : p + 4], "little") for p in range(a, b, 4)]
        else:
            out.append(v)
        if len(out) > MAX_LIST:
            raise buf.fail(f"{what}: more than {MAX_LIST} values in one attribute")
    return out


# AttributeProto: 1 name, 20 type, 2 f (fixed32), 3 i, 4 s, 5 t, 6 g, 7 floats, 8 ints,
# 9 strings, 10 tensors, 11 graphs, 22 sparse_tensor, 23 sparse_tensors, 14 tp, 15 tps
_ATTR_SCALAR = {1: _LEN, 20: _VARINT, 2: _I32, 3: _VARINT, 4: _LEN, 5: _LEN, 6: _LEN}
_ATTR_LIST = {7: _I32, 8: _VARINT, 9: _LEN, 10: _LEN, 11: _LEN, 22: _LEN, 23: _LEN}
_ATTR: Spec = {k: (v, _ONE) for k, v in _ATTR_SCALAR.items()}
_ATTR.update({k: (v, MAX_LIST) for k, v in _ATTR_LIST.items()})


def _attribute(buf: Buf, span: tuple[int, int], where: str) -> Attribute:
    a, b = span
    f = _fields(buf, (a, b), where, _ATTR)
    for num, wt in _ATTR_SCALAR.items():  # scalars must not come packed (except LEN fields)
        if wt != _LEN and any(isinstance(v, tuple) for v in f.get(num, [])):
            raise buf.fail(f"{where}: attribute field {num} is malformed")
    name = _str(buf, _one(f, 1, (a, a)), where)
    where = f"{where}, attribute {name!r}"
    at = Attribute(name, _int(buf, f, 20, 0, where))
    if f.get(2):
        at.f = _f32(_one(f, 2))
    if f.get(3):
        at.i = _signed(_one(f, 3))
    if f.get(4):
        s0, s1 = _one(f, 4)
        if s1 - s0 > MAX_STRING:
            raise buf.fail(f"{where}: a string of {s1 - s0:,} bytes")
        at.s = bytes(buf.data[s0:s1])
    if f.get(5):
        at.t = _tensor(buf, _one(f, 5), f"{where} (tensor)")
    at.graph = bool(f.get(6) or f.get(11))
    if f.get(9) or f.get(10) or f.get(22) or f.get(23):
        at.graph = at.graph or bool(f.get(10) or f.get(22) or f.get(23))
    at.floats = [_f32(v) for v in _list_field(buf, f, 7, _I32, where)]
    at.ints = [_signed(v) for v in _list_field(buf, f, 8, _VARINT, where)]
    if at.type == 0:  # old files may leave the type out: infer it
        at.type = 1 if at.f is not None else 2 if at.i is not None else 3 if at.s else 0
        at.type = 4 if at.t is not None else 6 if at.floats else 7 if at.ints else at.type
    return at


_NODE: Spec = {
    1: (_LEN, MAX_IO),
    2: (_LEN, MAX_IO),
    3: (_LEN, _ONE),
    4: (_LEN, _ONE),
    5: (_LEN, MAX_IO),
    7: (_LEN, _ONE),
}


def _node(buf: Buf, span: tuple[int, int], index: int) -> Node:
    where = f"node {index}"
    f = _fields(buf, span, where, _NODE)
    name = _str(buf, _one(f, 3, (0, 0)), where)
    op = _str(buf, _one(f, 4, (0, 0)), where)
    where = f"node {index} ({op} {name!r})"
    attrs: dict[str, Attribute] = {}
    for s in f.get(5, []):
        at = _attribute(buf, s, where)
        attrs[at.name] = at
    return Node(
        index=index,
        name=name,
        op_type=op,
        domain=_str(buf, _one(f, 7, (0, 0)), where),
        inputs=[_str(buf, s, where) for s in f.get(1, [])],
        outputs=[_str(buf, s, where) for s in f.get(2, [])],
        attrs=attrs,
    )


def _value(buf: Buf, span: tuple[int, int], where: str) -> Value:
    f = _fields(buf, span, where, {1: (_LEN, _ONE), 2: (_LEN, _ONE)})
    name = _str(buf, _one(f, 1, (0, 0)), where)
    tp = _one(f, 2)
    if tp is None:
        return Value(name, None, None)
    tf = _fields(buf, tp, where, {1: (_LEN, _ONE)})  # TypeProto.tensor_type
    tt = _one(tf, 1)
    if tt is None:
        return Value(name, None, None)
    ttf = _fields(buf, tt, where, {1: (_VARINT, _ONE), 2: (_LEN, _ONE)})
    elem = _int(buf, ttf, 1, 0, where)
    sh = _one(ttf, 2)
    if sh is None:
        return Value(name, elem, None)
    dims: list[int | str | None] = []
    for d in _fields(buf, sh, where, {1: (_LEN, MAX_DIMS)}).get(1, []):
        df = _fields(buf, d, where, {1: (_VARINT, _ONE), 2: (_LEN, _ONE)})
        if 1 in df:
            dims.append(_signed(_int(buf, df, 1, 0, where)))
        elif 2 in df:
            dims.append(_str(buf, _one(df, 2), where) or None)
        else:
            dims.append(None)
    return Value(name, elem, tuple(dims))


_GRAPH: Spec = {
    1: (_LEN, MAX_NODES),
    2: (_LEN, _ONE),
    5: (_LEN, MAX_TENSORS),
    11: (_LEN, MAX_VALUES),
    12: (_LEN, MAX_VALUES),
    15: (_LEN, MAX_TENSORS),
}


def _graph(buf: Buf, span: tuple[int, int]) -> Graph:
    where = "the graph"
    f = _fields(buf, span, where, _GRAPH)
    inits: dict[str, Tensor] = {}
    for i, s in enumerate(f.get(5, [])):
        t = _tensor(buf, s, f"initializer {i}")
        key = t.name
        if key in inits:
            raise buf.fail(f"initializer {key!r} appears twice")
        inits[key] = t
    return Graph(
        name=_str(buf, _one(f, 2, (0, 0)), where),
        nodes=[_node(buf, s, i) for i, s in enumerate(f.get(1, []))],
        initializers=inits,
        inputs=[_value(buf, s, f"graph input {i}") for i, s in enumerate(f.get(11, []))],
        outputs=[_value(buf, s, f"graph output {i}") for i, s in enumerate(f.get(12, []))],
        sparse=len(f.get(15, [])),
    )


_MODEL: Spec = {
    1: (_VARINT, _ONE),
    7: (_LEN, _ONE),
    8: (_LEN, 1024),
    25: (_LEN, MAX_NODES),
}


def parse_model(buf: Buf) -> Model:
    """The model's structure: graph, nodes, attributes, tensor descriptions (no tensor data
    is read). FormatError for anything malformed."""
    if not buf.data:
        raise buf.fail("the file is empty")
    f = _fields(buf, (0, len(buf.data)), "the model", _MODEL)
    if 1 not in f or 7 not in f:
        raise buf.fail(
            "not an ONNX model (no ir_version or no graph: a ModelProto starts with both)"
        )
    opsets: dict[str, int] = {}
    for s in f.get(8, []):
        of = _fields(buf, s, "opset_import", {1: (_LEN, _ONE), 2: (_VARINT, _ONE)})
        opsets[_str(buf, _one(of, 1, (0, 0)), "opset_import")] = _signed(
            _int(buf, of, 2, 0, "opset_import")
        )
    return Model(
        ir_version=_signed(_int(buf, f, 1, 0, "the model")),
        opsets=opsets,
        graph=_graph(buf, _one(f, 7)),
        functions=len(f.get(25, [])),
    )


# -- tensor data ---------------------------------------------------------------------------

_PACKED_KIND = {4: "f4", 10: "f8", 5: "varint", 7: "varint", 11: "varint"}
_PACKED_FIELD_OK = {1: 4, 11: 10, 6: 5, 5: 5, 3: 5, 2: 5, 9: 5, 7: 7}


def external_file(t: Tensor, base_dir: str | None, file: str) -> tuple[str, int, int]:
    """``(path, offset, length)`` of an external tensor's bytes, checked: the location is a
    relative path inside the model's folder (no absolute path, no ``..``, no symlink leading
    out), a regular file holding ``offset + length`` bytes."""
    where = t.where
    ext = t.external or {}
    loc = ext.get("location")
    if not loc:
        raise FormatError(f"{file}: {where}: external data without a location")
    if base_dir is None:
        raise FormatError(
            f"{file}: {where}: keeps its data in an external file ({loc!r}), which a model "
            "read from bytes cannot reach; load it from its file instead"
        )
    parts = loc.replace("\\", "/").split("/")
    if os.path.isabs(loc) or loc.startswith(("/", "\\")) or ":" in loc or ".." in parts:
        raise FormatError(
            f"{file}: {where}: external data location {loc!r} is outside the model's folder "
            "(only relative paths inside it are allowed)"
        )
    base = os.path.realpath(base_dir)
    path = os.path.realpath(os.path.join(base, loc))
    if os.path.commonpath([base, path]) != base:
        raise FormatError(
            f"{file}: {where}: external data {loc!r} leads outside the model's folder (to {path})"
        )
    try:
        st = os.stat(path)
    except OSError as e:
        raise FormatError(
            f"{file}: {where}: external data file {loc!r} cannot be read ({e})"
        ) from None
    if not stat.S_ISREG(st.st_mode):
        raise FormatError(f"{file}: {where}: external data {loc!r} is not a regular file")
    itemsize = DTYPES[t.data_type].itemsize
    need = t.count * itemsize
    try:
        offset = int(ext.get("offset", "0"))
        length = int(ext["length"]) if "length" in ext else need
    except ValueError:
        raise FormatError(
            f"{file}: {where}: external data offset/length are not integers"
        ) from None
    if offset < 0 or length != need:
        raise FormatError(
            f"{file}: {where}: external data length {length:,} does not match dims {t.dims} "
            f"({need:,} bytes of {t.type_name})"
        )
    if offset + need > st.st_size:
        raise FormatError(
            f"{file}: {where}: declares {need:,} bytes at offset {offset:,} of {loc!r}, "
            f"which has only {st.st_size:,} bytes"
        )
    return path, offset, need


def data_bytes(t: Tensor, buf: Buf) -> int:
    """Bytes of data the tensor holds in the model file (for the size check before reading)."""
    if t.raw is not None:
        return t.raw[1] - t.raw[0]
    if t.packed is not None:
        return t.packed[2] - t.packed[1]
    return 0


def check_size(t: Tensor, buf: Buf, base_dir: str | None) -> None:
    """FormatError unless the tensor's bytes match its declared dims (nothing is read)."""
    file = buf.file
    dt = DTYPES[t.data_type]
    need = t.count * dt.itemsize
    if t.external is not None:
        external_file(t, base_dir, file)
        return
    if t.raw is not None:
        have = t.raw[1] - t.raw[0]
        if have != need:
            raise FormatError(
                f"{file}: {t.where}: raw_data has {have:,} bytes but dims {t.dims} of "
                f"{t.type_name} need {need:,}"
            )
        return
    if t.packed is None:
        if t.count:
            raise FormatError(f"{file}: {t.where}: dims {t.dims} but no data")
        return
    num, a, b = t.packed
    if _PACKED_FIELD_OK.get(t.data_type) != num:
        raise FormatError(
            f"{file}: {t.where}: data in field {num} does not fit element type {t.type_name}"
        )
    kind = _PACKED_KIND[num]
    n = b - a
    if kind == "varint":
        if not t.count <= n <= 10 * t.count:
            raise FormatError(
                f"{file}: {t.where}: {n:,} bytes of packed integers cannot hold dims {t.dims}"
            )
    elif n != t.count * int(kind[1]):
        raise FormatError(
            f"{file}: {t.where}: {n:,} bytes of packed data but dims {t.dims} need "
            f"{t.count * int(kind[1]):,}"
        )


def tensor_array(t: Tensor, buf: Buf, base_dir: str | None) -> np.ndarray:
    """The tensor's values (a new native-endian array), after :func:`check_size`."""
    check_size(t, buf, base_dir)
    dt = DTYPES[t.data_type]
    if t.external is not None:
        path, offset, need = external_file(t, base_dir, buf.file)
        with open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read(need)
        if len(data) != need:
            raise FormatError(f"{buf.file}: {t.where}: external data file changed while read")
        arr = np.frombuffer(data, dt)
    elif t.raw is not None:
        arr = np.frombuffer(buf.view[t.raw[0] : t.raw[1]], dt)
    elif t.packed is not None:
        num, a, b = t.packed
        kind = _PACKED_KIND[num]
        if kind == "varint":
            vals = _packed_varints(buf, (a, b), t.count, t.where)
            if len(vals) != t.count:
                raise FormatError(
                    f"{buf.file}: {t.where}: {len(vals)} packed values, dims {t.dims} need "
                    f"{t.count}"
                )
            arr = np.array([_signed(v) for v in vals], dtype=np.int64)
        else:
            arr = np.frombuffer(buf.view[a:b], np.dtype("<" + kind))
    else:
        arr = np.zeros(0, dt)
    return np.array(arr.reshape(t.dims), dtype=dt.newbyteorder("="), copy=True)
