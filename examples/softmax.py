"""The softmax examples of "Deep Learning from Scratch" ch. 3.5, computed with minifw.

``mf.functional.softmax`` subtracts the per-row maximum first, so huge inputs neither
overflow nor give NaN, and a batch is normalised row by row (the book's version sums
over axis 0, which is wrong for batches).

Run: ``python examples/softmax.py``.
"""

from __future__ import annotations

import numpy as np

import minifw as mf
from minifw import functional as F


def show(values: list[float]) -> np.ndarray:
    y = mf.to_numpy(F.softmax(np.array(values, dtype=np.float64)))
    print(f"softmax({values}) = {np.array2string(y, precision=8)}  (sum {y.sum():.8f})")
    return y


def main() -> None:
    show([1.0, 2.0, 3.0])
    show([0.3, 2.9, 4.0])
    show([1010.0, 1000.0, 990.0])
    show([1000.0, 1001.0, 2000.0])
    batch = np.array([[1.0, 2.0, 3.0], [1010.0, 1000.0, 990.0]])
    yb = mf.to_numpy(F.softmax(batch))
    print("a batch, normalised per row:")
    print(np.array2string(yb, precision=8))
    print("row sums:", np.array2string(yb.sum(axis=1), precision=8))
    y32 = mf.to_numpy(F.softmax(np.array([1.0, 2.0, 3.0], dtype=np.float32)))
    print("float32 stays float32:", y32.dtype, np.array2string(y32, precision=8))


if __name__ == "__main__":
    main()
