"""PyTorch -> ONNX -> minifw -> ONNX -> ONNX Runtime, offline.

Trains a small MLP in PyTorch on synthetic data, exports it with torch.onnx.export, loads
it in minifw (mf.load), checks that minifw's outputs equal PyTorch's, fine-tunes it for one
epoch in minifw, exports it back (model.save("....onnx")) and checks ONNX Runtime's outputs
against minifw's. Prints what it checked; exits 0 when every check passes.

Needs torch, onnx and onnxruntime (pip install "minifw[onnx]" torch onnxruntime).
"""

from __future__ import annotations

import contextlib
import io
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

import minifw as mf

TOL = 1e-5


def synthetic(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Three classes separated by a random linear teacher over 20 features."""
    teacher = np.random.default_rng(7).standard_normal((20, 3))
    x = rng.standard_normal((n, 20)).astype(np.float32)
    return x, np.argmax(x @ teacher, axis=1)


def train_torch(x: np.ndarray, y: np.ndarray) -> object:
    import torch

    torch.manual_seed(0)
    nn = torch.nn
    net = nn.Sequential(
        nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 16), nn.Tanh(), nn.Linear(16, 3)
    )
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(5):
        for i in range(0, len(x), 64):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(net(xt[i : i + 64]), yt[i : i + 64])
            loss.backward()
            opt.step()
    # serve probabilities: the exported graph ends in Softmax, as minifw's fit expects
    return nn.Sequential(*net, nn.Softmax(dim=1)).eval()


def main() -> int:
    try:
        import onnxruntime as ort
        import torch
    except ImportError as e:
        print(f"skipped: needs torch and onnxruntime ({e})")
        return 0
    rng = np.random.default_rng(0)
    x_train, y_train = synthetic(2000, rng)
    x_test, y_test = synthetic(500, rng)
    net = train_torch(x_train, y_train)
    with torch.no_grad():
        p_torch = net(torch.from_numpy(x_test)).numpy()  # type: ignore[operator]
    print(
        f"PyTorch MLP 20-32-16-3 trained: test accuracy {np.mean(p_torch.argmax(1) == y_test):.3f}"
    )

    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "torch_mlp.onnx"
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                net,
                (torch.from_numpy(x_test[:2]),),
                str(src),
                input_names=["x"],
                output_names=["p"],
                dynamic_axes={"x": {0: "batch"}, "p": {0: "batch"}},
                dynamo=False,
            )
        print(f"exported with torch.onnx.export: {src.name}, {src.stat().st_size:,} bytes")

        model = mf.load(src)
        print("loaded in minifw:", " -> ".join(type(m).__name__ for m in model))
        diff = float(np.max(np.abs(np.asarray(model(x_test)) - p_torch)))
        ok = diff <= TOL
        failures += not ok
        print(
            f"check minifw == PyTorch on {len(x_test)} inputs: max abs diff {diff:.2e} "
            f"(<= {TOL}: {'ok' if ok else 'FAILED'})"
        )

        acc_before = float(np.mean(np.argmax(model(x_test), 1) == y_test))
        model.fit(
            x_train, y_train, epochs=1, batch_size=64, optimizer="sgd", seed=0, progress=False
        )
        acc_after = float(np.mean(np.argmax(model(x_test), 1) == y_test))
        print(f"fine-tuned one epoch in minifw (SGD): accuracy {acc_before:.3f} -> {acc_after:.3f}")

        back = Path(tmp) / "minifw_tuned.onnx"
        model.save(back)
        sess = ort.InferenceSession(str(back), providers=["CPUExecutionProvider"])
        p_ort = sess.run(None, {sess.get_inputs()[0].name: x_test})[0]
        diff = float(np.max(np.abs(p_ort - np.asarray(model(x_test)))))
        ok = diff <= TOL
        failures += not ok
        print(
            f"exported back with model.save: ONNX Runtime == minifw: max abs diff {diff:.2e} "
            f"(<= {TOL}: {'ok' if ok else 'FAILED'})"
        )

        again = mf.load(back)
        same = bool(np.array_equal(again(x_test), model(x_test)))
        failures += not same
        print(f"check minifw -> ONNX -> minifw gives the same bits: {'ok' if same else 'FAILED'}")
    print("all checks passed" if not failures else f"{failures} checks FAILED")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
