"""The worked examples of "Deep Learning from Scratch" ch. 3, computed with minifw.

* one Dense layer (W = [[0.1, 0.2, 0.3], [0.5, 0.6, 0.3]], b = 1) on X = [1, 2], before and
  after the sigmoid;
* the three-layer sigmoid network of section 3.4 on X = [1, 1, 1] -> [0.74614674].

The layers are built in float64 so that the printed digits are the book's (minifw's
default float32 agrees to about 7 digits).

Run: ``python examples/three_layer_network.py`` (no downloads, NumPy only).
"""

from __future__ import annotations

import numpy as np

import minifw as mf


def dense_layer() -> None:
    """Section 3.4.2: one layer, before and after the activation."""
    layer = mf.Dense(2, 3, dtype="float64")
    layer.weight = [[0.1, 0.2, 0.3], [0.5, 0.6, 0.3]]
    layer.bias = 1.0  # a scalar fills the bias
    x = np.array([1.0, 2.0])
    a = mf.to_numpy(layer(x))
    z = mf.to_numpy(mf.Sequential(layer, mf.Sigmoid())(x))
    print("Dense 2->3 on X = [1, 2]")
    print("  before the activation:", np.array2string(a, precision=8))
    print("  after sigmoid:        ", np.array2string(z, precision=8), "shape", z.shape)
    batch = mf.to_numpy(mf.Sequential(layer, mf.Sigmoid())(x[None, :]))
    print("  on [[1, 2]]:          ", np.array2string(batch, precision=8), "shape", batch.shape)


def three_layer_network() -> mf.Sequential:
    """Section 3.4.3: the network of ``init_network()``, all sigmoid."""
    model = mf.Sequential(
        mf.Dense(3, 2, dtype="float64"),
        mf.Sigmoid(),
        mf.Dense(2, 3, dtype="float64"),
        mf.Sigmoid(),
        mf.Dense(3, 1, dtype="float64"),
        mf.Sigmoid(),
    )
    # the study note's dot_net_init() weights, each stored (in, out) as the book stores
    # them: W1 (3, 2), W2 (2, 3), W3 (3, 1).
    model.load_state_dict(
        {
            "0.weight": [[0.3, 0.1], [0.6, 0.1], [0.5, 0.2]],
            "0.bias": [1.0, 1.0],
            "2.weight": [[0.1, 0.1, 0.5], [0.8, 0.3, 0.2]],
            "2.bias": [0.1, 0.4, 0.5],
            "4.weight": [[0.3], [0.1], [0.4]],
            "4.bias": [0.5],
        }
    )
    return model


def main() -> None:
    dense_layer()
    model = three_layer_network()
    print()
    print("Three-layer sigmoid network")
    model.summary(print_fn=lambda s: print("  " + s.replace("\n", "\n  ")))
    y = mf.to_numpy(model(np.array([1.0, 1.0, 1.0])))
    print("  X = [1, 1, 1]   ->", np.array2string(y, precision=8), "shape", y.shape)
    yb = model.predict(np.array([[1.0, 1.0, 1.0]]))
    print("  X = [[1, 1, 1]] ->", np.array2string(yb, precision=8), "shape", yb.shape)


if __name__ == "__main__":
    main()
