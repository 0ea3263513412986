"""The PyTorch backend: torch tensors through the Array API (``array_api_compat.torch``).

The device is CUDA (``cuda:0``, torch's current device) when ``torch.cuda.is_available()``,
else the CPU; it is fixed when the backend is first loaded. Tensors that arrive on another
device, or that require grad, are moved / detached once at the edge (``asarray``). minifw
computes its own gradients, so no autograd graph is ever built.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._base import Backend


class TorchBackend(Backend):
    """torch tensors; ``linear`` is one ``torch.addmm`` (bias inside the GEMM) into the
    plan's buffer, activations run in place (``sigmoid_``, ``relu_``, ``tanh_``), softmax is
    ``torch.softmax``. Tensors here never require grad, so no autograd graph is built."""

    name = "torch"
    mutable = True

    def __init__(self, xp: Any, version: str, torch: Any) -> None:
        super().__init__(xp, version)
        self._torch = torch
        self._Tensor = torch.Tensor
        cuda = torch.cuda.is_available()
        self.device = (
            torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
        )

    def is_native(self, x: Any) -> bool:
        return isinstance(x, self._Tensor)

    # -- operations --------------------------------------------------------------------
    def empty(self, shape: tuple[int, ...], dtype: Any) -> Any:
        return self._torch.empty(shape, dtype=dtype, device=self.device)

    def linear(self, x: Any, w: Any, b: Any = None, out: Any = None, act: str | None = None) -> Any:
        torch = self._torch
        if b is not None and x.ndim == 2:
            y = torch.addmm(b, x, w) if out is None else torch.addmm(b, x, w, out=out)
        else:
            y = torch.matmul(x, w) if out is None else torch.matmul(x, w, out=out)
            if b is not None:
                y += b
        return self.activate(act, y, True) if act is not None else y

    def sigmoid(self, x: Any, inplace: bool = False) -> Any:
        return x.sigmoid_() if inplace else self._torch.sigmoid(x)

    def relu(self, x: Any, inplace: bool = False) -> Any:
        return x.relu_() if inplace else self._torch.relu(x)

    def tanh(self, x: Any, inplace: bool = False) -> Any:
        return x.tanh_() if inplace else self._torch.tanh(x)

    def softmax(self, x: Any, inplace: bool = False, axis: int = -1) -> Any:
        y = self._torch.softmax(x, dim=axis)
        return x.copy_(y) if inplace else y

    def asarray(self, x: Any, dtype: str | None = None) -> Any:
        if isinstance(x, self._Tensor):
            if x.requires_grad:
                x = x.detach()
            if x.device != self.device:
                x = x.to(self.device)
        return super().asarray(x, dtype)

    def from_numpy(self, a: np.ndarray) -> Any:
        # a copy: the caller's array may change later, and a parameter must not follow it
        return self._torch.tensor(a, device=self.device)

    def to_numpy(self, x: Any) -> np.ndarray:
        # on the CPU this shares the tensor's memory, as Tensor.numpy() does
        return x.detach().cpu().resolve_conj().numpy()

    def devices(self) -> list[str]:
        if self.device.type == "cuda":
            i = self.device.index or 0
            return [f"cuda:{i} {self._torch.cuda.get_device_name(i)}"]
        return [f"cpu ({self._torch.get_num_threads()} threads)"]

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            self._torch.cuda.synchronize(self.device)


def load() -> Backend:
    import torch
    from array_api_compat import torch as xp

    return TorchBackend(xp, torch.__version__, torch)
