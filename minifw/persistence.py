"""Saving and loading models: ``model.save(path)``, ``mf.load(path)``, ``mf.from_weights``.

Formats
-------
``.npz`` (the default): a NumPy zip archive holding one entry per parameter, keyed as in
``state_dict()`` (``"0.weight"``, ``"0.bias"``, ...), plus ``"__minifw__"``, the
architecture as JSON text (a NumPy unicode string). Read with ``allow_pickle=False``
through a strict reader: no pickle, ever, and no allocation larger than the file allows.

``.safetensors`` (needs the optional ``safetensors`` package): the same parameters, with
the architecture JSON in the header metadata under ``"minifw"``. Weights keep minifw's
``(in_features, out_features)`` layout; PyTorch's ``nn.Linear.weight`` is the transpose
``(out, in)``.

Every write goes to a temporary file in the target's directory and is renamed into
place, so a crash never leaves a half-written model.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import tokenize
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import IO, Any

import numpy as np

from . import _random
from ._atomic import atomic_write
from .errors import FormatError
from .layers import Module, Sequential
from .layers.module import LAYERS, SERVICES, register_layer

__all__ = ["FORMAT_VERSION", "from_weights", "load", "register_layer", "save"]

FORMAT_NAME = "minifw.model"
FORMAT_VERSION = 1
HEADER_KEY = "__minifw__"
_ST_META_KEY = "minifw"
_FLOATS = ("float32", "float64")
_MAX_DEFLATE_RATIO = 1100  # zlib cannot expand data more than ~1032x
_MAX_DEPTH = 32
_MAX_JSON_DEPTH = 2 * _MAX_DEPTH + 16  # a Sequential level is an object and a list
# A JSON string, or an unterminated one to the end: "? always matches, so no backtracking
_JSON_STRING = re.compile(r'"(?:[^"\\]+|\\.)*"?', re.DOTALL)


def _layer_classes() -> dict[str, type[Module]]:
    return LAYERS


# -- architecture <-> JSON -----------------------------------------------------------------


def _describe(m: Module, where: str) -> dict[str, Any]:
    name = type(m).__name__
    if _layer_classes().get(name) is not type(m):
        raise TypeError(
            f"cannot save {where} ({name}): not a minifw layer; register it with "
            "@minifw.register_layer"
        )
    if isinstance(m, Sequential):
        return {
            "class": name,
            "layers": [
                _describe(c, f"{where}.{i}" if where != "model" else f"layer {i}")
                for i, c in enumerate(m)
            ],
        }
    config = m.get_config()
    try:
        json.dumps(config)
    except TypeError as e:
        raise TypeError(
            f"cannot save {where} ({name}): get_config() is not JSON-able: {e}"
        ) from None
    return {"class": name, "config": config}


def _architecture(model: Module) -> str:
    if not isinstance(model, Module):
        raise TypeError(f"save expects a minifw Module, got {type(model).__name__}")
    from ._version import __version__

    doc = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "minifw_version": __version__,
        "model": _describe(model, "model"),
    }
    return json.dumps(doc, sort_keys=True)


@contextmanager
def _quiet_rng() -> Iterator[None]:
    """Building a model to load into draws initial weights: keep the user's stream intact."""
    saved = _random._rng
    _random._rng = np.random.default_rng(0)
    try:
        yield
    finally:
        _random._rng = saved


def _build(node: Any, file: str, where: str, depth: int = 0) -> Module:
    if depth > _MAX_DEPTH:
        raise FormatError(f"{file}: architecture nested more than {_MAX_DEPTH} levels deep")
    if not isinstance(node, dict) or not isinstance(node.get("class"), str):
        raise FormatError(
            f"{file}: {where}: expected an object with a 'class' name, got {node!r:.80}"
        )
    name = node["class"]
    classes = _layer_classes()
    cls = classes.get(name)
    if cls is None:
        raise FormatError(
            f"{file}: {where}: unknown layer {name!r} (known: {', '.join(sorted(classes))})"
        )
    if cls is Sequential or issubclass(cls, Sequential):
        layers = node.get("layers")
        if not isinstance(layers, list) or set(node) - {"class", "layers"}:
            raise FormatError(
                f"{file}: {where}: a Sequential needs a 'layers' list and nothing else"
            )
        children = [
            _build(c, file, f"layer {i}" if where == "model" else f"{where}.{i}", depth + 1)
            for i, c in enumerate(layers)
        ]
        try:
            return cls(*children)
        except (TypeError, ValueError) as e:
            raise FormatError(f"{file}: {where}: cannot build {name}: {e}") from None
    config = node.get("config", {})
    if not isinstance(config, dict) or set(node) - {"class", "config"}:
        raise FormatError(f"{file}: {where} ({name}): 'config' must be an object of arguments")
    try:
        return cls(**config)
    except (TypeError, ValueError) as e:
        raise FormatError(f"{file}: {where}: cannot build {name} from {config}: {e}") from None


def _declared_param_bytes(node: Any, depth: int = 0) -> int:
    """Bytes of the parameters an architecture declares (each layer class's
    ``declared_parameters``), before anything is built."""
    if depth > _MAX_DEPTH or not isinstance(node, dict):
        return 0
    if isinstance(node.get("layers"), list):
        return sum(_declared_param_bytes(c, depth + 1) for c in node["layers"])
    cls = LAYERS.get(node.get("class"))  # type: ignore[arg-type]
    config = node.get("config")
    if cls is None or not isinstance(config, dict):
        return 0
    try:
        decl = cls.declared_parameters(config)
    except Exception:  # a bad config: building the layer will say what is wrong
        return 0
    return sum(math.prod(shape) * (8 if dt == "float64" else 4) for shape, dt in decl.values())


def _json_depth(text: str) -> int:
    """How deeply ``text``'s arrays and objects nest (brackets inside strings not counted)."""
    if text.count("[") + text.count("{") <= _MAX_JSON_DEPTH:
        return 0  # cannot nest deeper than the limit
    code = _JSON_STRING.sub("", text).encode("utf-8", "replace")
    b = np.frombuffer(code, dtype=np.uint8)
    step = np.isin(b, (ord("["), ord("{"))).astype(np.int64)
    step -= np.isin(b, (ord("]"), ord("}")))
    return int(np.cumsum(step).max(initial=0))


def _parse_architecture(text: str, file: str, size: int) -> Any:
    depth = _json_depth(text)
    if depth > _MAX_JSON_DEPTH:
        raise FormatError(
            f"{file}: the architecture JSON is nested {depth} levels deep (at most "
            f"{_MAX_JSON_DEPTH} allowed)"
        )
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise FormatError(f"{file}: the architecture is not valid JSON ({e})") from None
    except RecursionError:  # the depth check above should make this unreachable
        raise FormatError(f"{file}: the architecture JSON is nested too deeply") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME:
        raise FormatError(f"{file}: the architecture entry is not a minifw model description")
    if doc.get("version") != FORMAT_VERSION:
        raise FormatError(
            f"{file}: model format version {doc.get('version')!r} is not supported "
            f"(this minifw reads version {FORMAT_VERSION})"
        )
    if "model" not in doc:
        raise FormatError(f"{file}: the architecture has no 'model' entry")
    need = _declared_param_bytes(doc["model"])
    if need > _MAX_DEFLATE_RATIO * size + (1 << 20):
        raise FormatError(
            f"{file}: the architecture declares {need:,} bytes of parameters but the file has "
            f"only {size:,} bytes"
        )
    return doc["model"]


# -- a strict .npz reader ------------------------------------------------------------------


def _read_npy(fp: IO[bytes], limit: int, file: str, key: str) -> np.ndarray:
    """One ``.npy`` entry: header checked (no objects, size within ``limit``), then data."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(fp)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(fp)
        elif version == (2, 0):
            shape, fortran, dtype = fmt.read_array_header_2_0(fp)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
    except (
        ValueError,
        TypeError,
        OSError,
        EOFError,
        SyntaxError,
        RecursionError,
        tokenize.TokenError,
        zipfile.BadZipFile,
    ) as e:
        raise FormatError(f"{file}: entry {key!r} is not a valid .npy array ({e})") from None
    if not isinstance(shape, tuple) or not all(type(d) is int and d >= 0 for d in shape):
        raise FormatError(
            f"{file}: entry {key!r} has shape {shape!r:.80}: dimensions must be "
            "non-negative integers"
        )
    try:
        np.empty((0,) * len(shape), dtype=np.uint8)  # allocates nothing; fails past 64 dims
    except ValueError:
        raise FormatError(
            f"{file}: entry {key!r} has {len(shape)} dimensions, more than a NumPy array can have"
        ) from None
    if dtype.itemsize == 0:
        raise FormatError(f"{file}: entry {key!r} has dtype {dtype}, whose items have no size")
    if dtype.hasobject or dtype.kind not in "biufcU":
        raise FormatError(
            f"{file}: entry {key!r} has dtype {dtype} (object or structured arrays would "
            "need pickle, which minifw never loads)"
        )
    count = math.prod(shape)
    nbytes = count * dtype.itemsize
    if nbytes > limit:
        raise FormatError(
            f"{file}: entry {key!r} declares shape {shape} ({nbytes:,} bytes) but holds at "
            f"most {limit:,} bytes"
        )
    try:
        data = fp.read(nbytes)
        extra = fp.read(1)
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise FormatError(f"{file}: entry {key!r} is damaged ({e})") from None
    if len(data) != nbytes:
        raise FormatError(
            f"{file}: entry {key!r} is truncated: shape {shape} needs {nbytes:,} bytes, "
            f"found {len(data):,}"
        )
    if extra:
        raise FormatError(f"{file}: entry {key!r} has data beyond its declared shape {shape}")
    arr = np.frombuffer(data, dtype=dtype)
    arr = arr.reshape(shape[::-1]).T if fortran else arr.reshape(shape)
    return np.array(arr, dtype=dtype.newbyteorder("="), copy=True)


def _read_npz(path: str) -> dict[str, np.ndarray]:
    """Every entry of a ``.npz`` file, read strictly; FormatError for anything malformed."""
    size = os.path.getsize(path)
    try:
        zf = zipfile.ZipFile(path)
    except (
        zipfile.BadZipFile,
        NotImplementedError,
        ValueError,
        EOFError,
    ) as e:  # "zip file version 25.5"
        raise FormatError(f"{path}: not an .npz archive ({e})") from None
    out: dict[str, np.ndarray] = {}
    with zf:
        for zi in zf.infolist():
            if not zi.filename.endswith(".npy"):
                raise FormatError(f"{path}: unexpected entry {zi.filename!r} (not a .npy array)")
            key = zi.filename[: -len(".npy")]
            if key in out:
                raise FormatError(f"{path}: entry {key!r} appears twice")
            if zi.compress_size > size or zi.file_size > max(
                _MAX_DEFLATE_RATIO * zi.compress_size, 1 << 16
            ):
                raise FormatError(f"{path}: entry {key!r} has impossible sizes (damaged archive)")
            try:
                with zf.open(zi) as fp:
                    out[key] = _read_npy(fp, zi.file_size, path, key)
            except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, RuntimeError) as e:
                raise FormatError(f"{path}: entry {key!r} is damaged ({e})") from None
    return out


# -- .safetensors ---------------------------------------------------------------------------


def _safetensors_error() -> FormatError:
    return FormatError(
        "reading or writing .safetensors needs the optional package safetensors: pip install "
        '"minifw[safetensors]"'
    )


def _read_safetensors(path: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    try:
        from safetensors import safe_open
    except ImportError:
        raise _safetensors_error() from None
    try:
        with safe_open(path, framework="np") as f:
            meta = f.metadata() or {}
            tensors = {k: np.array(f.get_tensor(k), copy=True) for k in f.keys()}  # noqa: SIM118
    except FormatError:
        raise
    except Exception as e:  # SafetensorError and friends: the file is not valid
        raise FormatError(f"{path}: not a valid .safetensors file ({e})") from None
    return tensors, dict(meta)


def _write_safetensors(path: str, tensors: dict[str, np.ndarray], meta: dict[str, str]) -> None:
    try:
        from safetensors.numpy import save as st_save
    except ImportError:
        raise _safetensors_error() from None
    data = st_save({k: np.ascontiguousarray(v) for k, v in tensors.items()}, metadata=meta)
    with atomic_write(path) as f:
        f.write(data)


def _is_safetensors(path: str, head: bytes) -> bool:
    return path.endswith(".safetensors") or (len(head) >= 9 and head[8:9] == b"{")


# -- public API -----------------------------------------------------------------------------


def save(model: Module, path: str | os.PathLike[str]) -> None:
    """Save ``model`` (architecture, parameters, dtype) to ``path``.

    A path ending in ``.safetensors`` is written as safetensors, one ending in ``.onnx`` as
    an ONNX graph (see :mod:`minifw.onnx`); anything else as ``.npz`` (at exactly ``path``:
    no suffix is added). Written atomically.
    """
    file = os.fspath(path)
    if file.lower().endswith(".onnx"):  # ONNX graph (needs the optional onnx package)
        from .onnx import export

        export(model, file)
        return
    text = _architecture(model)
    params = model.state_dict()
    if file.endswith(".safetensors"):
        _write_safetensors(file, params, {_ST_META_KEY: text})
        return
    arrays: dict[str, np.ndarray] = {HEADER_KEY: np.array(text)}
    arrays.update(params)
    with atomic_write(file) as f:
        np.savez(f, allow_pickle=False, **arrays)  # type: ignore[arg-type]


def _open_checked(path: str | os.PathLike[str]) -> tuple[str, bytes]:
    file = os.fspath(path)
    if os.path.isdir(file):
        raise FormatError(f"{file}: is a directory, not a model file")
    with open(file, "rb") as fh:  # FileNotFoundError as usual when it is missing
        head = fh.read(16)
    if not head:
        raise FormatError(f"{file}: the file is empty")
    return file, head


def load(path: str | os.PathLike[str], *, backend: str | None = None) -> Module:
    """Load a model saved by :func:`save` / ``model.save``: an equal model, with the same
    architecture, parameters and dtype, on the current backend (or ``backend``).

    Anything that is not a valid minifw model raises :class:`minifw.FormatError` naming
    the file and the problem. For a plain ``W1, b1, W2, b2, ...`` weight file use
    :func:`from_weights`. A path ending in ``.onnx`` is imported as an ONNX graph (see
    :mod:`minifw.onnx`).
    """
    from . import backend as _backend

    file, head = _open_checked(path)
    size = os.path.getsize(file)
    if file.lower().endswith(".onnx") and not head.startswith(b"PK"):
        from .onnx import load as load_onnx

        return load_onnx(file, backend=backend)  # type: ignore[no-any-return]
    if head.startswith(b"PK"):
        arrays = _read_npz(file)
        if HEADER_KEY not in arrays:
            raise FormatError(
                f"{file}: no {HEADER_KEY!r} entry, so not a model saved by minifw (entries: "
                f"{sorted(arrays)[:8]}); for a plain W1, b1, ... weight file use mf.from_weights "
                "(on the command line: --from-weights)"
            )
        h = arrays.pop(HEADER_KEY)
        if h.dtype.kind != "U" or h.shape != ():
            raise FormatError(f"{file}: the {HEADER_KEY!r} entry is not a JSON string")
        text = str(h[()])
    elif _is_safetensors(file, head):
        arrays, meta = _read_safetensors(file)
        if _ST_META_KEY not in meta:
            raise FormatError(
                f"{file}: the safetensors metadata has no {_ST_META_KEY!r} architecture, so it "
                "was not saved by minifw; for a plain W1, b1, ... weight file use mf.from_weights "
                "(on the command line: --from-weights)"
            )
        text = meta[_ST_META_KEY]
    else:
        raise FormatError(f"{file}: not a minifw model file (neither .npz nor .safetensors)")
    arch = _parse_architecture(text, file, size)
    ctx = _backend.use(backend) if backend is not None else contextlib.nullcontext()
    with ctx, _quiet_rng():
        model = _build(arch, file, "model")
    _fill(model, arrays, file)
    return model


def _fill(model: Module, arrays: Mapping[str, np.ndarray], file: str) -> None:
    """Check keys, shapes and dtypes exactly, then set every parameter."""
    slots = list(model.named_state_slots())
    expected = [k for k, _, _ in slots]
    missing = [k for k in expected if k not in arrays]
    extra = sorted(k for k in arrays if k not in set(expected))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing parameters {missing}")
        if extra:
            parts.append(f"unexpected entries {extra}")
        raise FormatError(f"{file}: " + "; ".join(parts) + f" (the architecture needs {expected})")
    for key, m, n in slots:
        a = arrays[key]
        cur = m.get_param(n)
        want_shape = tuple(cur.shape)
        want_dtype = m.backend.dtype_name(cur)
        if a.dtype != np.dtype(want_dtype):
            raise FormatError(
                f"{file}: parameter {key!r} has dtype {a.dtype}, expected {want_dtype}"
            )
        if tuple(a.shape) != want_shape:
            raise FormatError(
                f"{file}: parameter {key!r} has shape {tuple(a.shape)}, expected {want_shape}"
            )
        m.set_param(n, a)


_ACTIVATIONS = {
    "sigmoid": "Sigmoid",
    "relu": "ReLU",
    "tanh": "Tanh",
    "step": "Step",
    "softmax": "Softmax",
    "identity": "Identity",
}
_WKEY = re.compile(r"^([Wb])([1-9][0-9]*)$")


def _activation(name: str | None, what: str) -> Module | None:
    if name is None or name in ("none", "linear"):
        return None
    if not isinstance(name, str) or name.lower() not in _ACTIVATIONS:
        raise ValueError(
            f"from_weights: unknown {what} {name!r}; choose one of {sorted(_ACTIVATIONS)} or None"
        )
    return _layer_classes()[_ACTIVATIONS[name.lower()]]()


def from_weights(
    source: str | os.PathLike[str] | Mapping[str, Any],
    *,
    activation: str | None = "sigmoid",
    output: str | None = "softmax",
    dtype: str | None = None,
) -> Sequential:
    """Build a Sequential from ``W1, b1, W2, b2, ...`` weights, such as the reference network.

    ``source``: a ``.npz`` or ``.safetensors`` file, or a mapping of arrays. ``W<i>`` has
    shape ``(in, out)``; ``b<i>`` (optional: without it the layer has no bias) ``(out,)``.
    Between the Dense layers goes ``activation``; after the last, ``output`` (names:
    sigmoid, relu, tanh, step, softmax, identity; ``None`` for nothing). ``dtype`` defaults
    to the weights' (float32 unless they are float64). The model is built on the current
    backend::

        model = mf.from_weights("sample_weight.npz", activation="sigmoid", output="softmax")
    """
    if isinstance(source, Mapping):
        file = "weights"
        arrays = {str(k): np.asarray(v) for k, v in source.items()}
    else:
        file, head = _open_checked(source)
        if head.startswith(b"PK"):
            arrays = _read_npz(file)
        elif _is_safetensors(file, head):
            arrays = _read_safetensors(file)[0]
        else:
            raise FormatError(f"{file}: not a weight file (neither .npz nor .safetensors)")
    _activation(activation, "activation")  # validate the names before any work
    _activation(output, "output")
    layers: dict[int, dict[str, np.ndarray]] = {}
    for k, v in arrays.items():
        mt = _WKEY.match(k)
        if mt is None:
            raise FormatError(f"{file}: unexpected key {k!r} (expected W1, b1, W2, b2, ...)")
        layers.setdefault(int(mt.group(2)), {})[mt.group(1)] = v
    n = len(layers)
    if n == 0 or sorted(layers) != list(range(1, n + 1)):
        raise FormatError(
            f"{file}: layer numbers must run 1..n without gaps, found {sorted(layers)}"
        )
    from .layers import Dense

    mods: list[Module] = []
    prev_out: int | None = None
    for i in range(1, n + 1):
        p = layers[i]
        if "W" not in p:
            raise FormatError(f"{file}: b{i} has no matching W{i}")
        w = p["W"]
        if w.ndim != 2 or w.dtype.kind not in "biuf":
            raise FormatError(
                f"{file}: W{i} must be a 2-D numeric (in, out) matrix, got {w.dtype} {w.shape}"
            )
        if 0 in w.shape:
            raise FormatError(
                f"{file}: W{i} has shape {w.shape}: a layer needs at least one input and one "
                "output feature"
            )
        if prev_out is not None and w.shape[0] != prev_out:
            raise FormatError(
                f"{file}: W{i} has shape {w.shape} but W{i - 1} outputs {prev_out} features "
                f"(weights are (in, out))"
            )
        b = p.get("b")
        if b is not None and (
            b.ndim != 1 or b.shape[0] != w.shape[1] or b.dtype.kind not in "biuf"
        ):
            raise FormatError(
                f"{file}: b{i} must have shape ({w.shape[1]},), got {b.dtype} {b.shape}"
            )
        dt = dtype or (str(w.dtype) if str(w.dtype) in _FLOATS else "float32")
        with _quiet_rng():
            layer = Dense(
                int(w.shape[0]), int(w.shape[1]), bias=b is not None, init="zeros", dtype=dt
            )
        layer.weight = w.astype(dt, copy=False)
        if b is not None:
            layer.bias = b.astype(dt, copy=False)
        mods.append(layer)
        act = _activation(activation, "activation") if i < n else _activation(output, "output")
        if act is not None:
            mods.append(act)
        prev_out = int(w.shape[1])
    return Sequential(*mods)


SERVICES["save"] = save
