"""Step, sigmoid and ReLU over [-5, 5), as in "Deep Learning from Scratch" ch. 3.2, saved as
a PNG (needs matplotlib: ``pip install "minifw[plot]"``).

Run: ``python examples/activation_functions.py [-o activation_functions.png]``.
"""

from __future__ import annotations

import argparse

import numpy as np

import minifw as mf
from minifw import functional as F


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Plot step, sigmoid and ReLU to a PNG.")
    parser.add_argument("-o", "--output", default="activation_functions.png")
    args = parser.parse_args(argv)
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        print('this example needs matplotlib: pip install "minifw[plot]"')
        return 1

    x = np.arange(-5.0, 5.0, 0.1)
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    panels = (
        ("step", F.step, (-0.1, 1.1)),
        ("sigmoid", F.sigmoid, (-0.1, 1.1)),
        ("ReLU", F.relu, (-0.5, 5.5)),
    )
    for ax, (name, fn, ylim) in zip(axes, panels, strict=True):
        ax.plot(x, mf.to_numpy(fn(x)))
        ax.set_ylim(*ylim)
        ax.set_title(name)
        ax.set_xlabel("x")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("h(x)")
    fig.tight_layout()
    fig.savefig(args.output, format="png", dpi=100)
    plt.close(fig)
    print(f"saved {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
