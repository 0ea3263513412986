"""The example scripts run and print what the book ("Deep Learning from Scratch") prints."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name: str, *args: str, env: dict[str, str] | None = None) -> str:
    e = dict(os.environ)
    e.update(env or {})
    r = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        env=e,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_three_layer_network() -> None:
    out = run_example("three_layer_network.py")
    assert "before the activation: [2.1 2.4 1.9]" in out
    assert "after sigmoid:         [0.89090318 0.9168273  0.86989153] shape (3,)" in out
    assert "[[0.89090318 0.9168273  0.86989153]] shape (1, 3)" in out
    assert "X = [1, 1, 1]   -> [0.74614674] shape (1,)" in out
    assert "X = [[1, 1, 1]] -> [[0.74614674]] shape (1, 1)" in out


def test_softmax() -> None:
    out = run_example("softmax.py")
    assert "softmax([1.0, 2.0, 3.0]) = [0.09003057 0.24472847 0.66524096]" in out
    assert (
        "softmax([1010.0, 1000.0, 990.0]) = [9.99954600e-01 4.53978686e-05 2.06106005e-09]" in out
    )
    assert "softmax([1000.0, 1001.0, 2000.0]) = [0. 0. 1.]" in out
    assert "nan" not in out.lower()
    assert "float32 stays float32: float32" in out


def test_mnist_inference_reference_accuracy(data_dir: Path) -> None:
    out = run_example("mnist_inference.py", env={"MINIFW_DATA_DIR": str(data_dir)})
    assert out.strip() == "accuracy 0.9352 (9352/10000)"


def _png_chunks(data: bytes) -> list[bytes]:
    """Chunk types of a PNG, each CRC checked; fails on anything malformed."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG signature"
    pos, kinds = 8, []
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + n]
        (crc,) = struct.unpack(">I", data[pos + 8 + n : pos + 12 + n])
        assert zlib.crc32(kind + body) == crc, f"bad CRC in {kind!r}"
        kinds.append(kind)
        pos += 12 + n
    return kinds


def test_activation_functions_writes_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="the optional plot extra (matplotlib)")
    out_file = tmp_path / "act.png"
    out = run_example("activation_functions.py", "-o", str(out_file))
    assert f"saved {out_file}" in out
    data = out_file.read_bytes()
    kinds = _png_chunks(data)
    assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND" and b"IDAT" in kinds
    width, height = struct.unpack(">II", data[16:24])
    assert width >= 600 and height >= 200


def test_onnx_roundtrip() -> None:
    for mod in ("torch", "onnx", "onnxruntime"):
        pytest.importorskip(mod, reason=f"the ONNX round-trip example needs {mod}")
    out = run_example("onnx_roundtrip.py")
    assert "check minifw == PyTorch on 500 inputs" in out
    assert "ONNX Runtime == minifw" in out and "the same bits: ok" in out
    assert out.rstrip().endswith("all checks passed")


def test_book_convnets_reproduce_the_books_networks(data_dir: Path) -> None:
    """The book's trained SimpleConvNet and DeepConvNet on the MNIST test set (the counts
    are checked against an independent PyTorch forward in tests/test_book_convnets.py)."""
    out = run_example("book_convnets.py", env={"MINIFW_DATA_DIR": str(data_dir)})
    assert out.splitlines() == [
        "SimpleConvNet (ch. 7) accuracy 0.9600 (9600/10000)",
        "DeepConvNet   (ch. 8) accuracy 0.9797 (9797/10000)",
    ]
