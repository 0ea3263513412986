"""The ``minifw`` command: ``info``, ``eval``, ``predict``, ``convert`` and ``bench``.

Exit codes: 0 success; 2 usage errors (unknown subcommand, bad flag); 1 runtime errors,
printed as one line ``minifw: error: ...`` (with the traceback under ``--debug``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

PROG = "minifw"
DATASET_NAMES = ("mnist", "fashion-mnist")


class _UsageError(Exception):
    """A bad command line found after parsing (exit code 2)."""


# -- info -------------------------------------------------------------------------------------


def _backend_report() -> list[dict[str, Any]]:
    import minifw as mf

    rows: list[dict[str, Any]] = []
    for name in mf.backend.NAMES:
        try:
            b = mf.backend.get(name, source="minifw info")
        except mf.BackendError as e:
            rows.append({"name": name, "available": False, "reason": str(e)})
            continue
        try:
            devices = [str(d) for d in b.devices()]
        except Exception as e:  # a broken driver must not break `info`
            devices = [f"(cannot list devices: {type(e).__name__}: {e})"]
        rows.append({"name": name, "available": True, "version": b.version, "devices": devices})
    return rows


def _blas_report() -> dict[str, Any]:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return {
            "error": "threadpoolctl is not installed (pip install threadpoolctl; it is a dependency of minifw)"
        }
    libs = [
        {
            "library": i.get("internal_api"),
            "version": i.get("version"),
            "threads": i.get("num_threads"),
            "threading_layer": i.get("threading_layer"),
            "path": i.get("filepath"),
            "prefix": i.get("prefix"),
        }
        for i in threadpool_info()
        if i.get("user_api") == "blas"
    ]
    return {"blas": libs}


def _cmd_info(args: argparse.Namespace) -> int:
    import minifw as mf
    from minifw.backend import _native_conv

    report = {
        "minifw": mf.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "numpy": np.__version__,
        "backends": _backend_report(),
        **_blas_report(),
        "conv_kernel": _native_conv.status(),
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"minifw {report['minifw']} (Python {report['python']}, NumPy {report['numpy']})")
    print(f"platform: {report['platform']}")
    print("backends:")
    for r in report["backends"]:
        if r["available"]:
            print(f"  {r['name']:<17} {r['version']:<12} devices: {', '.join(r['devices'])}")
        else:
            print(f"  {r['name']:<17} unavailable: {r['reason']}")
    if "error" in report:
        print(f"BLAS: unknown ({report['error']})")
    elif not report["blas"]:
        print("BLAS: none found by threadpoolctl")
    for lib in report.get("blas", []):
        print(
            f"BLAS: {lib['library']} {lib['version']} ({lib['prefix']}), {lib['threads']} threads"
            + (f", {lib['threading_layer']}" if lib["threading_layer"] else "")
        )
    print(f"conv kernel: {report['conv_kernel']}")
    return 0


# -- eval / predict ---------------------------------------------------------------------------


def _load_model(path: str, from_weights: bool, activation: str, output: str) -> Any:
    import minifw as mf

    if from_weights:
        return mf.from_weights(path, activation=activation, output=output)
    return mf.load(path)


def _ends_in_softmax(model: Any) -> bool:
    import minifw as mf

    last = model
    while isinstance(last, mf.Sequential) and len(last):
        last = last[len(last) - 1]
    return isinstance(last, mf.Softmax)


def _probabilities(model: Any, out: np.ndarray) -> np.ndarray:
    """Class probabilities from a model's outputs (softmax applied unless it ends in one)."""
    p = out.astype(np.float64)
    if not _ends_in_softmax(model):
        p = p - p.max(axis=1, keepdims=True)
        np.exp(p, out=p)
        p /= p.sum(axis=1, keepdims=True)
    return p


def _cmd_eval(args: argparse.Namespace) -> int:
    from minifw import datasets

    loader = datasets.load_mnist if args.dataset == "mnist" else datasets.load_fashion_mnist
    model = _with_backend(
        args.backend,
        lambda: _load_model(args.model, args.from_weights, args.activation, args.output_layer),
    )
    x, y = loader(args.split, data_dir=args.data_dir, download=not args.no_download)
    out = np.asarray(model.predict(x, batch_size=args.batch_size))
    if out.ndim != 2 or out.shape[0] != len(y) or out.shape[1] < int(y.max()) + 1:
        raise ValueError(
            f"the model's output has shape {out.shape}; eval needs one score per class, "
            f"shape ({len(y)}, {int(y.max()) + 1} or more)"
        )
    p = _probabilities(model, out)
    picked = p[np.arange(len(y)), y]
    loss = float(-np.mean(np.log(np.maximum(picked, 1e-12))))
    correct = int(np.sum(np.argmax(out, axis=1) == y))
    print(f"dataset {args.dataset} ({args.split}), {len(y)} samples")
    print(f"loss {loss:.4f}")
    print(f"accuracy {correct / len(y):.4f}")
    return 0


def _read_input(path: str, key: str | None) -> np.ndarray:
    from minifw import FormatError

    if os.path.isdir(path):
        raise FormatError(f"{path}: is a directory, not a .npy/.npz input")
    try:
        data = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise
    except (ValueError, OSError, EOFError) as e:
        raise FormatError(f"{path}: not a readable .npy/.npz array file ({e})") from None
    if isinstance(data, np.lib.npyio.NpzFile):
        with data:
            keys = list(data.files)
            if key is None:
                if len(keys) == 1:
                    key = keys[0]
                elif "x" in keys:
                    key = "x"
                else:
                    raise FormatError(f"{path}: holds several arrays {keys}; choose one with --key")
            if key not in keys:
                raise FormatError(f"{path}: no array {key!r} (it holds {keys})")
            try:
                arr = data[key]
            except (ValueError, OSError, EOFError) as e:
                raise FormatError(f"{path}: array {key!r} cannot be read ({e})") from None
    else:
        if key is not None:
            raise _UsageError("--key applies to .npz inputs only")
        arr = data
    if arr.dtype.kind not in "biuf":
        raise FormatError(f"{path}: expected a numeric array, got dtype {arr.dtype}")
    return arr


def _cmd_predict(args: argparse.Namespace) -> int:
    from ._atomic import atomic_write

    model = _with_backend(
        args.backend,
        lambda: _load_model(args.model, args.from_weights, args.activation, args.output_layer),
    )
    x = _read_input(args.input, args.key)
    out = np.asarray(model.predict(x, batch_size=args.batch_size))
    classes = np.argmax(out, axis=-1) if out.ndim >= 1 else out
    if args.output is None:
        for c in np.atleast_1d(classes):
            print(int(c))
        return 0
    result = classes.astype(np.int64) if args.classes else out
    with atomic_write(args.output) as f:  # follows links; FIFOs, /dev/stdout written directly
        np.save(f, result, allow_pickle=False)
    what = "class indices" if args.classes else "outputs"
    try:  # -o /dev/stdout (or whatever stdout goes to): keep the note out of the data
        to_stdout = os.path.samestat(os.stat(args.output), os.fstat(sys.stdout.fileno()))
    except (OSError, ValueError, AttributeError):  # no real stdout (captured, closed)
        to_stdout = False
    print(
        f"wrote {args.output}: {what}, shape {result.shape}, dtype {result.dtype}",
        file=sys.stderr if to_stdout else sys.stdout,
    )
    return 0


def _with_backend(name: str | None, fn: Any) -> Any:
    import minifw as mf

    if name is None:
        return fn()
    with mf.backend.use(name):
        return fn()


# -- convert ----------------------------------------------------------------------------------


def _cmd_convert(args: argparse.Namespace) -> int:
    import minifw as mf

    src = mf.load(args.source)
    dst = os.fspath(args.dest)
    if dst.lower().endswith(".onnx"):
        shape = None
        if args.input_shape:
            try:
                shape = tuple(int(v) for v in args.input_shape.split(","))
            except ValueError:
                raise _UsageError(
                    f"--input-shape: expected sizes like 1,28,28, got {args.input_shape!r}"
                ) from None
        try:
            mf.onnx.export(src, dst, opset=args.opset or mf.onnx.DEFAULT_OPSET, input_shape=shape)
        except ValueError as e:
            if "input_shape" not in str(e) or shape is not None:
                raise
            raise _UsageError(
                "the model's first layer does not tell its input shape: pass --input-shape "
                "with one sample's sizes, e.g. --input-shape 1,28,28"
            ) from None
    elif args.opset is not None or args.input_shape:
        raise _UsageError("--opset and --input-shape apply to an .onnx destination only")
    else:
        src.save(dst)
    print(f"wrote {dst}: {src.num_parameters():,} parameters")
    return 0


# -- bench ------------------------------------------------------------------------------------


def _cmd_bench(argv: list[str]) -> int:
    import importlib

    try:
        bench = importlib.import_module("minifw.bench")
    except ImportError as e:
        raise RuntimeError(f"the bench command is not available here ({e})") from e
    rc = bench.main(argv)
    return int(rc or 0)


# -- parser -----------------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="a model saved by minifw (.npz or .safetensors)")
    p.add_argument(
        "--from-weights",
        action="store_true",
        help="MODEL is a plain W1, b1, W2, b2, ... weight file (e.g. sample_weight.npz)",
    )
    p.add_argument(
        "--activation",
        default="sigmoid",
        help="with --from-weights: the hidden activation (default: sigmoid)",
    )
    p.add_argument(
        "--output-layer",
        dest="output_layer",
        default="softmax",
        help="with --from-weights: the output activation (default: softmax)",
    )
    p.add_argument("--backend", default=None, help="backend to run on (default: the current one)")
    p.add_argument(
        "--batch-size", type=_positive_int, default=1000, help="batch size (default: 1000)"
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (``bench`` is listed here; its arguments are its own)."""
    from ._version import __version__

    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks"
    )
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="minifw: a small, fast, autograd-free neural-network framework.",
        parents=[debug],
    )
    parser.add_argument("--version", action="version", version=f"minifw {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "info",
        parents=[debug],
        help="version, backends, devices, BLAS",
        description="Show minifw's version, every backend (available ones with their version "
        "and devices, the others with the reason), and the BLAS in use with its threads.",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")

    p = sub.add_parser(
        "eval",
        parents=[debug],
        help="loss and accuracy of a saved model on a dataset",
        description="Load a saved model and print its cross-entropy loss and accuracy on "
        "MNIST or Fashion-MNIST.",
    )
    _add_model_args(p)
    p.add_argument("--dataset", required=True, choices=DATASET_NAMES)
    p.add_argument("--split", default="test", choices=("train", "test"), help="default: test")
    p.add_argument("--data-dir", default=None, help="folder holding the IDX files themselves")
    p.add_argument("--no-download", action="store_true", help="never download the dataset")

    p = sub.add_parser(
        "predict",
        parents=[debug],
        help="run a saved model on an array file",
        description="Run a saved model on INPUT (.npy, or .npz with --key) and print the "
        "predicted class of each row, or save the outputs with -o.",
    )
    _add_model_args(p)
    p.add_argument("input", metavar="INPUT", help="a .npy or .npz file of inputs")
    p.add_argument("--key", default=None, help="the array to use in an .npz input")
    p.add_argument("-o", "--output", default=None, help="save the model's outputs to this .npy")
    p.add_argument("--classes", action="store_true", help="with -o: save class indices instead")

    p = sub.add_parser(
        "convert",
        parents=[debug],
        help="convert a model between .npz, .safetensors and .onnx",
        description="Load SOURCE (.npz, .safetensors or .onnx) and write it to DEST, the "
        "format chosen by DEST's extension (.onnx: an ONNX graph; .safetensors; else .npz).",
    )
    p.add_argument("source", metavar="SOURCE", help="the model to read")
    p.add_argument("dest", metavar="DEST", help="the file to write")
    p.add_argument(
        "--opset", type=_positive_int, default=None, help="ONNX opset to write (default 17)"
    )
    p.add_argument(
        "--input-shape",
        default=None,
        help="ONNX: one sample's sizes, e.g. 1,28,28, when the first layer does not tell them",
    )

    sub.add_parser(
        "bench",
        add_help=False,
        help="benchmarks (arguments are forwarded; see minifw bench --help)",
    )
    return parser


def _split_bench(argv: list[str]) -> tuple[list[str], list[str]] | None:
    """``(global options, bench arguments)`` when the command is ``bench``, else ``None``."""
    for i, a in enumerate(argv):
        if a == "bench":
            return argv[:i], argv[i + 1 :]
        if not a.startswith("-"):
            return None
    return None


def _one_line(e: BaseException) -> str:
    msg = " ".join(str(e).split()) or type(e).__name__
    if isinstance(e, (KeyError, AttributeError, TypeError, IndexError)):
        msg = f"{type(e).__name__}: {msg}"
    return msg


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    bench = _split_bench(args_list)
    debug = False
    try:
        if bench is not None:
            head, rest = bench
            ns = parser.parse_args(head)  # global options only (e.g. --debug)
            debug = bool(getattr(ns, "debug", False))
            return _cmd_bench(rest)
        ns = parser.parse_args(args_list)
        debug = bool(getattr(ns, "debug", False))
        if ns.command is None:
            parser.print_help(sys.stderr)
            return 2
        handler = {
            "info": _cmd_info,
            "eval": _cmd_eval,
            "predict": _cmd_predict,
            "convert": _cmd_convert,
        }[ns.command]
        return handler(ns)
    except SystemExit as e:  # argparse: --help (0), usage errors (2)
        return int(e.code) if isinstance(e.code, int) else (0 if e.code is None else 1)
    except _UsageError as e:
        if debug:
            raise
        print(f"{PROG}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if debug:
            raise
        print(f"{PROG}: error: {_one_line(e)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
