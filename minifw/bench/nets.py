"""The benchmarked networks (S and W), their random weights, and the same network as a
minifw model built through the public API."""

from __future__ import annotations

from typing import Any

import numpy as np

NETWORKS: dict[str, dict[str, Any]] = {
    "S": {"sizes": (784, 50, 100, 10), "act": "sigmoid", "batches": (1, 100, 10000)},
    "W": {"sizes": (784, 1024, 1024, 10), "act": "relu", "batches": (1, 256, 8192)},
}
GPU_BATCHES = {"S": (10000, 100000), "W": (8192, 65536)}
SMOKE_BATCHES = {"S": (1, 64), "W": (1, 32)}
MINIFW_REF = "minifw numpy model(x)"  # the engine the ratios are taken from
MINIFW_REF_GPU = "minifw cupy model(x)"


class Net:
    """Random float32 weights for one network, shared by every engine."""

    def __init__(self, name: str, seed: int = 0) -> None:
        spec = NETWORKS[name]
        self.name = name
        self.sizes: tuple[int, ...] = spec["sizes"]
        self.act: str = spec["act"]
        rng = np.random.default_rng(seed)
        self.W: list[np.ndarray] = []
        self.b: list[np.ndarray] = []
        for i in range(3):
            k, n = self.sizes[i], self.sizes[i + 1]
            self.W.append((rng.standard_normal((k, n)) * np.sqrt(2.0 / k)).astype(np.float32))
            self.b.append((rng.standard_normal(n) * 0.1).astype(np.float32))

    def describe(self) -> str:
        return "-".join(map(str, self.sizes)) + f" {self.act}/softmax"

    def flops(self, batch: int) -> int:
        return 2 * batch * sum(self.sizes[i] * self.sizes[i + 1] for i in range(3))

    def act_bytes(self, batch: int) -> list[int]:
        return [batch * w * 4 for w in self.sizes[1:]]

    def minifw_model(self, backend: str = "numpy") -> Any:
        """The network as ``mf.Sequential`` of ``Dense`` and activations on ``backend``, with
        this net's weights (raises :class:`minifw.BackendError` if ``backend`` cannot run)."""
        import minifw as mf

        with mf.backend.use(backend):
            layers: list[Any] = []
            for i in range(3):
                layers.append(mf.Dense(self.sizes[i], self.sizes[i + 1]))
                if i < 2:
                    layers.append(mf.Sigmoid() if self.act == "sigmoid" else mf.ReLU())
            layers.append(mf.Softmax())
            model = mf.Sequential(*layers)
        model.load_state_dict({f"{2 * i}.{k}": v for i in range(3) for k, v in self._kv(i)})
        return model

    def _kv(self, i: int) -> list[tuple[str, np.ndarray]]:
        return [("weight", self.W[i]), ("bias", self.b[i])]
