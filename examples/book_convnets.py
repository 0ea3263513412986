"""The convolutional networks of "Deep Learning from Scratch" ch. 7 and 8, with the book's
own trained parameters, classify the 10,000 MNIST test images with minifw.

* ``SimpleConvNet`` (ch. 7): Conv 30x5x5 (stride 1, pad 0), ReLU, 2x2 max-pool, Dense
  4320→100, ReLU, Dense 100→10, softmax. Weights ``weights/simple_convnet.npz``.
* ``DeepConvNet`` (ch. 8): six 3x3 convolutions with 16, 16, 32, 32, 64, 64 filters
  (paddings 1, 1, 1, 2, 1, 1), each followed by ReLU, a 2x2 max-pool after the 2nd, 4th and
  6th; then Dense 1024→50, ReLU, Dropout(0.5), Dense 50→10, Dropout(0.5), softmax.
  Weights ``weights/deep_convnet.npz``.

The weight files (keys W1, b1, W2, b2, ...; float64 as trained) and the MNIST test files
are looked for under ``--data-dir``, else ``$MINIFW_DATA_DIR``, else ``../shared/data``
beside the repository. The inputs are pixels / 255 as float32, shaped (N, 1, 28, 28)
(NCHW); the networks run in float32 (the book's float64 weights are cast on loading).
Expected output::

    SimpleConvNet (ch. 7) accuracy 0.9600 (9600/10000)
    DeepConvNet   (ch. 8) accuracy 0.9797 (9797/10000)

(the same counts as the book's forward pass computed independently in float64 with
``torch.nn.functional``: ``tests/test_book_convnets.py``).

Run: ``MINIFW_DATA_DIR=../shared/data python examples/book_convnets.py``.

The mapping from the book's parameters to minifw's layers (:func:`load_book_weights`):

* ``W<i>`` of a convolution is ``(filters, channels, kh, kw)``: minifw's ``Conv2D.weight``
  layout as it is (PyTorch's and ONNX's too); ``b<i>`` is ``Conv2D.bias`` ``(filters,)``.
* ``W<i>`` of an ``Affine`` is ``(in, out)``: minifw's ``Dense.weight`` layout as it is.
  The book's ``Affine`` flattens its ``(N, C, H, W)`` input in C order, as ``mf.Flatten``.
* The book's ``Dropout`` is not inverted: in training it zeroes inputs and leaves the
  survivors unscaled, so at test time it multiplies its input by ``1 - 0.5 = 0.5``.
  minifw's ``Dropout`` is inverted (the identity at test time), so the two factors of 0.5
  are folded into the last Dense layer. The book's test-time forward is

      logits = 0.5 * (W8 · (0.5 * relu(W7 x + b7)) + b8)
             = (0.25 * W8) · relu(W7 x + b7) + 0.5 * b8

  so ``Dense 50→10`` gets ``weight = 0.25 * W8`` and ``bias = 0.5 * b8``. (The second
  factor changes the probabilities, softmax(0.5 * z) is flatter than softmax(z), not the
  argmax; both are kept so that minifw's probabilities are the book's.) The model keeps
  its two ``Dropout(0.5)`` layers, which do nothing in ``predict``.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

import minifw as mf
from minifw.datasets import load_mnist

DEFAULT_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"

#: DeepConvNet's convolutions: (in channels, filters, padding); 3x3 kernels, stride 1
DEEP_CONVS = ((1, 16, 1), (16, 16, 1), (16, 32, 1), (32, 32, 2), (32, 64, 1), (64, 64, 1))
#: the factor the book's test-time Dropout multiplies by (1 - dropout ratio 0.5)
BOOK_DROPOUT_KEEP = 0.5


def simple_convnet(dtype: str = "float32") -> mf.Sequential:
    """The ch. 7 ``SimpleConvNet`` for (N, 1, 28, 28) inputs (weights still random)."""
    return mf.Sequential(
        mf.Conv2D(1, 30, 5, dtype=dtype),
        mf.ReLU(),
        mf.MaxPool2D(2),
        mf.Flatten(),
        mf.Dense(30 * 12 * 12, 100, dtype=dtype),
        mf.ReLU(),
        mf.Dense(100, 10, dtype=dtype),
        mf.Softmax(),
    )


def deep_convnet(dtype: str = "float32") -> mf.Sequential:
    """The ch. 8 ``DeepConvNet`` for (N, 1, 28, 28) inputs (weights still random)."""
    layers: list[mf.Module] = []
    for i, (c, f, pad) in enumerate(DEEP_CONVS):
        layers += [mf.Conv2D(c, f, 3, padding=pad, dtype=dtype), mf.ReLU()]
        if i % 2 == 1:
            layers.append(mf.MaxPool2D(2))
    layers += [
        mf.Flatten(),
        mf.Dense(64 * 4 * 4, 50, dtype=dtype),
        mf.ReLU(),
        mf.Dropout(0.5),
        mf.Dense(50, 10, dtype=dtype),
        mf.Dropout(0.5),
        mf.Softmax(),
    ]
    return mf.Sequential(*layers)


def load_book_weights(model: mf.Sequential, path: Path, *, book_dropout: bool) -> mf.Sequential:
    """Load the book's ``W1, b1, W2, b2, ...`` into ``model``'s Conv2D and Dense layers, in
    order (``W<i>`` and ``b<i>`` go to the i-th layer with parameters), cast to each layer's
    dtype. With ``book_dropout`` the book's test-time dropout factors are folded into the
    last Dense layer (``weight * 0.25``, ``bias * 0.5``; see the module docstring)."""
    with np.load(path) as f:
        params = {k: f[k] for k in f.files}
    trainable = [(i, m) for i, m in enumerate(model) if isinstance(m, (mf.Conv2D, mf.Dense))]
    if len(params) != 2 * len(trainable):
        raise ValueError(
            f"{path}: {len(params)} arrays for {len(trainable)} layers with weight and bias"
        )
    state: dict[str, np.ndarray] = {}
    for k, (i, m) in enumerate(trainable, start=1):
        w, b = params[f"W{k}"], params[f"b{k}"]
        if book_dropout and k == len(trainable):
            # logits = 0.5 * (W · (0.5 * h) + b) = (0.25 * W) · h + 0.5 * b
            w = w * (BOOK_DROPOUT_KEEP * BOOK_DROPOUT_KEEP)
            b = b * BOOK_DROPOUT_KEEP
        state[f"{i}.weight"] = w.astype(m.dtype)
        state[f"{i}.bias"] = b.astype(m.dtype)
    model.load_state_dict(state)  # shapes are checked against the layers
    return model


def build(data: Path, dtype: str = "float32") -> dict[str, mf.Sequential]:
    """Both networks with the book's trained parameters, by name."""
    w = data / "weights"
    return {
        "SimpleConvNet (ch. 7)": load_book_weights(
            simple_convnet(dtype), w / "simple_convnet.npz", book_dropout=False
        ),
        "DeepConvNet   (ch. 8)": load_book_weights(
            deep_convnet(dtype), w / "deep_convnet.npz", book_dropout=True
        ),
    }


def load_test_images(data: Path) -> tuple[np.ndarray, np.ndarray]:
    """MNIST test images as (10000, 1, 28, 28) float32 pixels / 255, and int64 labels."""
    x, t = load_mnist("test", flatten=False, data_dir=data / "mnist")
    return x.reshape(-1, 1, 28, 28), t


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=None, help="default: $MINIFW_DATA_DIR")
    parser.add_argument("--verbose", action="store_true", help="show the plans and the times")
    args = parser.parse_args(argv)
    data = args.data_dir or Path(os.environ.get("MINIFW_DATA_DIR") or DEFAULT_DATA)

    x, t = load_test_images(data)
    for name, model in build(data).items():
        t0 = time.perf_counter()
        p = mf.to_numpy(model.predict(x))
        dt = time.perf_counter() - t0
        correct = int(np.sum(np.argmax(p, axis=1) == t))
        print(f"{name} accuracy {correct / len(x):.4f} ({correct}/{len(x)})")
        if args.verbose:
            print(f"  {mf.plan.explain(model)}\n  predict: {dt:.2f} s for {len(x)} images")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
