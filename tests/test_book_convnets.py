"""The book's trained convnets (examples/book_convnets.py) on minifw against the book's forward
pass written independently with ``torch.nn.functional`` in float64, on the MNIST test set.

The reference applies the book's layers literally (conv2d, relu, max_pool2d, the Affine's
C-order flatten and ``x @ W + b``, and the book's non-inverted test-time Dropout, which
multiplies by 0.5) to the weight files as they are; minifw runs the example's float32 models,
whose last Dense layer has the dropout factors folded in. minifw must get exactly the same
images right (the same count of correct predictions). Needs ``MINIFW_DATA_DIR``.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

import minifw as mf

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "book_convnets.py"
#: the counts the example prints (and the README quotes)
EXPECTED = {"SimpleConvNet (ch. 7)": 9600, "DeepConvNet   (ch. 8)": 9797}


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("book_convnets", EXAMPLE)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def book_logits(torch: Any, name: str, weights: Path, x: np.ndarray, dtype: Any) -> np.ndarray:
    """The book's test-time forward (before the softmax) in ``dtype``, from the .npz as it
    is, 1000 images at a time."""
    with np.load(weights / f"{name}.npz") as f:
        p = {k: torch.from_numpy(f[k]).to(dtype) for k in f.files}
    parts = [_forward(torch, name, p, torch.from_numpy(x[s : s + 1000]).to(dtype))
             for s in range(0, len(x), 1000)]  # fmt: skip
    return torch.cat(parts).numpy()  # type: ignore[no-any-return]


def _forward(torch: Any, name: str, p: dict[str, Any], h: Any) -> Any:
    F = torch.nn.functional
    if name == "simple_convnet":
        h = F.max_pool2d(F.relu(F.conv2d(h, p["W1"], p["b1"], stride=1, padding=0)), 2, 2)
        h = F.relu(F.linear(h.flatten(1), p["W2"].T, p["b2"]))
        return F.linear(h, p["W3"].T, p["b3"])
    for i, pad in enumerate((1, 1, 1, 2, 1, 1), start=1):
        h = F.relu(F.conv2d(h, p[f"W{i}"], p[f"b{i}"], stride=1, padding=pad))
        if i % 2 == 0:
            h = F.max_pool2d(h, 2, 2)
    h = F.relu(F.linear(h.flatten(1), p["W7"].T, p["b7"]))
    h = h * 0.5  # the book's Dropout at test time: x * (1 - 0.5)
    h = F.linear(h, p["W8"].T, p["b8"])
    return h * 0.5  # the second Dropout, before the softmax


#: a top-2 logit margin above this decides the class in float32 as in float64 (float32's
#: rounding moves these logits by about 1e-5)
MARGIN = 1e-2
#: the reference's float64 rows besides the close calls: the probabilities are checked here
N_PROBS = 200


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def book_data() -> Path:
    """``$MINIFW_DATA_DIR`` (module-scoped: the forward passes run once for every test)."""
    d = os.environ.get("MINIFW_DATA_DIR")
    if not d or not Path(d).is_dir():
        pytest.skip("MINIFW_DATA_DIR is not set to a directory (CI sets it to ../shared/data)")
    return Path(d)


@pytest.fixture(scope="module")
def book(book_data: Path) -> dict[str, Any]:
    """The reference classes of all 10,000 images in float64 terms: PyTorch's float64 conv
    is ~7x slower than its float32 one (50 s for DeepConvNet here), so the float32 forward
    classifies every image and the float64 forward decides every close call (top-2 margin
    below MARGIN) and the first N_PROBS images. (Measured once on all 10,000 in float64:
    the same classes; 5 and 3 close calls; float32 logits within 7e-6 of float64.)"""
    torch = pytest.importorskip("torch", reason="the reference forward is torch.nn.functional")
    ex = load_example()
    x, t = ex.load_test_images(book_data)
    models = ex.build(book_data)
    names = dict(zip(models, ("simple_convnet", "deep_convnet"), strict=True))
    weights = book_data / "weights"
    ref: dict[str, Any] = {}
    with torch.inference_mode():
        for k, v in names.items():
            z32 = book_logits(torch, v, weights, x, torch.float32)
            top2 = np.sort(z32, axis=1)[:, -2:]
            close = np.flatnonzero(top2[:, 1] - top2[:, 0] < MARGIN)
            rows = np.union1d(np.arange(N_PROBS), close)
            z64 = book_logits(torch, v, weights, x[rows], torch.float64)
            pred = z32.argmax(axis=1)
            pred[rows] = z64.argmax(axis=1)
            ref[k] = {"pred": pred, "close": close, "z64": z64[:N_PROBS]}
    return {"ex": ex, "x": x, "t": t, "models": models, "ref": ref}


def test_minifw_classifies_exactly_as_the_book(book: dict[str, Any]) -> None:
    x, t = book["x"], book["t"]
    assert x.shape == (10000, 1, 28, 28) and x.dtype == np.float32
    for name, model in book["models"].items():
        assert model.dtype == "float32"
        got = mf.to_numpy(model.predict(x)).argmax(axis=1)
        want = book["ref"][name]["pred"]
        assert len(book["ref"][name]["close"]) < 100, name  # the float64 pass stays small
        n_got, n_want = int((got == t).sum()), int((want == t).sum())
        assert n_got == n_want == EXPECTED[name], (name, n_got, n_want)
        # the same images right and wrong, not only as many
        assert np.array_equal(got == t, want == t), name


def test_probabilities_are_the_books_softmax(book: dict[str, Any]) -> None:
    """The folded dropout factors give the book's probabilities (softmax of half the
    logits for DeepConvNet), not only its argmax: float32 against float64."""
    x = book["x"][:N_PROBS]
    for name, model in book["models"].items():
        p = mf.to_numpy(model.predict(x)).astype(np.float64)
        ref = softmax(book["ref"][name]["z64"])
        np.testing.assert_allclose(p, ref, atol=2e-5, err_msg=name)
        assert np.allclose(p.sum(axis=1), 1.0, atol=1e-5)


def test_float64_models_match_to_rounding(book: dict[str, Any], book_data: Path) -> None:
    """In float64 minifw computes the book's logits up to the order of the sums."""
    x = book["x"][:N_PROBS]
    for name, model in book["ex"].build(book_data, "float64").items():
        assert model.dtype == "float64"
        p = mf.to_numpy(model.predict(x.astype(np.float64)))
        ref = softmax(book["ref"][name]["z64"])
        np.testing.assert_allclose(p, ref, rtol=1e-9, atol=1e-12, err_msg=name)


def test_the_mapping_folds_the_dropout_factors(book: dict[str, Any], book_data: Path) -> None:
    ex = book["ex"]
    deep = book["models"]["DeepConvNet   (ch. 8)"]
    with np.load(book_data / "weights" / "deep_convnet.npz") as f:
        w8, b8, w1 = f["W8"], f["b8"], f["W1"]
    dense = [m for m in deep if isinstance(m, mf.Dense)]
    np.testing.assert_allclose(mf.to_numpy(dense[-1].weight), 0.25 * w8, rtol=1e-6)
    np.testing.assert_allclose(mf.to_numpy(dense[-1].bias), 0.5 * b8, rtol=1e-6)
    conv = next(m for m in deep if isinstance(m, mf.Conv2D))
    np.testing.assert_array_equal(mf.to_numpy(conv.weight), w1.astype(np.float32))
    assert sum(isinstance(m, mf.Dropout) for m in deep) == 2
    with pytest.raises(ValueError, match="arrays for"):  # a file for another network
        ex.load_book_weights(ex.simple_convnet(), book_data / "weights" / "deep_convnet.npz",
                             book_dropout=False)  # fmt: skip
