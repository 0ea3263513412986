"""Handwritten-digit recognition with the pretrained network of "Deep Learning from Scratch"
ch. 3.6: a 784-50-100-10 sigmoid network classifies the 10,000 MNIST test images.

The weights (``weights/sample_weight.npz``, keys W1, b1, W2, b2, W3, b3) and the MNIST test
files are looked for under ``$MINIFW_DATA_DIR``, by default ``../shared/data`` beside the
repository. Expected output: ``accuracy 0.9352 (9352/10000)``.

Run: ``MINIFW_DATA_DIR=../shared/data python examples/mnist_inference.py``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

import minifw as mf
from minifw.datasets import load_mnist

DEFAULT_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def build_network(weights: Path) -> mf.Sequential:
    """Dense, Sigmoid, Dense, Sigmoid, Dense, Softmax, from the W1..b3 weight file."""
    return mf.from_weights(weights, activation="sigmoid", output="softmax")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=None, help="default: $MINIFW_DATA_DIR")
    parser.add_argument("--batch-size", type=int, default=100)
    args = parser.parse_args(argv)
    data = args.data_dir or Path(os.environ.get("MINIFW_DATA_DIR") or DEFAULT_DATA)

    model = build_network(data / "weights" / "sample_weight.npz")
    x, t = load_mnist("test", normalize=True, flatten=True, data_dir=data / "mnist")

    correct = 0
    for i in range(0, len(x), args.batch_size):  # batches of 100, as in the book
        y = mf.to_numpy(model(x[i : i + args.batch_size]))
        correct += int(np.sum(np.argmax(y, axis=1) == t[i : i + args.batch_size]))
    print(f"accuracy {correct / len(x):.4f} ({correct}/{len(x)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
