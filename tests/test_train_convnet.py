"""A quick run of examples/train_convnet.py (``--quick``: one epoch on 2000 Fashion-MNIST
images, minifw beside PyTorch from the same initial weights). Needs ``MINIFW_DATA_DIR``.

The full run (10 epochs on 60000 images) ended at 0.9165 test accuracy; here one epoch
on a subset must beat chance clearly, save a model that ``mf.load`` reads back with the
same predictions, and start PyTorch from minifw's initial weights.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

import minifw as mf

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "train_convnet.py"


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("train_convnet", EXAMPLE)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_quick_run(data_dir: Path, tmp_path: Path) -> None:
    ex = load_example()
    fm = data_dir / "fashion-mnist"
    argv = ["--quick", "--data-dir", str(fm), "--out", str(tmp_path)]
    if importlib.util.find_spec("torch") is None:
        argv.append("--no-torch")
    out = ex.main(argv)
    assert out["epochs"] == 1
    c = out["curves"]["minifw"]
    assert len(c["loss"]) == len(c["test_accuracy"]) == 1 and c["seconds"][0] > 0
    assert out["test_accuracy"] >= 0.5, out["test_accuracy"]  # chance is 0.10
    if "torch" in out["curves"]:  # the same training: the same ballpark after one epoch
        t = out["curves"]["torch"]
        assert abs(t["test_accuracy"][0] - c["test_accuracy"][0]) < 0.1
        assert abs(t["loss"][0] - c["loss"][0]) < 0.2
    model = mf.load(out["model_path"])
    assert isinstance(model, mf.Sequential)
    x, y = ex.load("test", fm)
    x, y = x[: ex.QUICK_TEST], y[: ex.QUICK_TEST]
    acc = float(np.mean(mf.to_numpy(model.predict(x)).argmax(axis=1) == y))
    assert acc == pytest.approx(out["test_accuracy"])
    if out["png"] is not None:
        assert out["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_torch_twin_starts_from_minifw_weights() -> None:
    torch = pytest.importorskip("torch")
    ex = load_example()
    model = ex.build(0)
    net = ex.torch_twin(model).eval()
    x = np.random.default_rng(0).random((4, 1, 28, 28), dtype=np.float32)
    with torch.inference_mode():
        z = torch.softmax(net(torch.from_numpy(x)), dim=1).numpy()
    np.testing.assert_allclose(mf.to_numpy(model.predict(x)), z, rtol=1e-4, atol=1e-6)


def test_bench_trains_the_examples_network() -> None:
    """``minifw bench``'s CNN training epoch (``train_model``) is the example's network:
    the same layers, configurations and initial weights."""
    from minifw.bench.convnets import train_model

    ex = load_example()
    mine, bench = ex.build(3), train_model(3)
    assert [type(m) for m in mine] == [type(m) for m in bench]
    assert [m.get_config() for m in mine] == [m.get_config() for m in bench]
    a, b = mine.state_dict(), bench.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
