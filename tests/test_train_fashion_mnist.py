"""A short run of examples/train_fashion_mnist.py on a Fashion-MNIST subset (real data).

The full example (60000 images, 10 epochs) reaches about 0.89; here 10000 images and two
epochs must bring the loss down and the test accuracy well above chance (0.1).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

import minifw as mf

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "train_fashion_mnist.py"


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("train_fashion_mnist", EXAMPLE)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_short_training_run(data_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="the example plots its curves with matplotlib")
    ex = load_example()
    out = ex.main(
        [
            "--epochs",
            "2",
            "--subset",
            "10000",
            "--data-dir",
            str(data_dir / "fashion-mnist"),
            "--out",
            str(tmp_path),
            "--no-progress",
        ]
    )
    h = out["history"]
    assert len(h["loss"]) == 2 and len(h["val_accuracy"]) == 2
    assert h["loss"][1] < h["loss"][0]
    assert h["val_loss"][1] < h["val_loss"][0]
    assert out["test_accuracy"] >= 0.75, out["test_accuracy"]  # chance is 0.10
    assert out["test_accuracy"] == pytest.approx(h["val_accuracy"][-1])
    assert out["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if out["model_path"] is not None:  # saved when this minifw has mf.save
        model = mf.load(out["model_path"])
        x, y = ex.load("test", data_dir / "fashion-mnist")
        acc = float(np.mean(model.predict(x).argmax(axis=1) == y))
        assert acc == pytest.approx(out["test_accuracy"])
