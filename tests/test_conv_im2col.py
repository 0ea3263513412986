"""The NumPy convolutions' im2col + GEMM path, where the compiled kernel is not built (no C
compiler at install) or is off (``MINIFW_NATIVE=0``): the convolution-op, plan and fused
training-block tests again, with the kernel off. Where the kernel is on, those modules test
it for every float32 convolution of stride 1, which would leave this path to float64 and
strided convolutions only."""

import pytest
from test_conv_ops import *  # noqa: F403
from test_conv_plan import *  # noqa: F403
from test_train_blocks import *  # noqa: F403


@pytest.fixture(autouse=True)
def _kernel_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MINIFW_NATIVE", "0")
