"""Shared test settings and fixtures.

* hypothesis: no deadline (the machine is shared and noisy), a modest example count so the
  whole suite fits on 2 cores; ``HYPOTHESIS_PROFILE=thorough`` runs more.
* ``backend_name``: parametrises a test over numpy and array_api_strict (the portable path).
* ``data_dir``: ``$MINIFW_DATA_DIR`` or a skip with the reason.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

import minifw as mf

settings.register_profile(
    "default",
    deadline=None,
    max_examples=40,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,  # backend_name is a plain parameter
    ],
)
settings.register_profile(
    "thorough",
    deadline=None,
    max_examples=500,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

PORTABLE = ["numpy", "array_api_strict"]


@pytest.fixture(params=PORTABLE)
def backend_name(request: pytest.FixtureRequest) -> str:
    """Each test using this runs on numpy and on array_api_strict."""
    return request.param


@pytest.fixture
def on_backend(backend_name: str):
    """Enter ``mf.backend.use(backend_name)`` for the test; yields the Backend."""
    with mf.backend.use(backend_name) as b:
        yield b


def assert_namespace(arr: object, backend_name: str) -> None:
    """The array belongs to the engine of ``backend_name`` (not only the right values)."""
    b = mf.backend.get(backend_name)
    assert b.is_native(arr), (
        f"expected a {backend_name} array, got {type(arr).__module__}.{type(arr).__name__}"
    )


@pytest.fixture
def data_dir() -> Path:
    d = os.environ.get("MINIFW_DATA_DIR")
    if not d:
        pytest.skip("MINIFW_DATA_DIR is not set (CI sets it to ../shared/data)")
    p = Path(d)
    if not p.is_dir():
        pytest.skip(f"MINIFW_DATA_DIR={d} is not a directory")
    return p


@pytest.fixture(autouse=True)
def _fresh_seed() -> None:
    mf.seed(12345)


def simple_convnet() -> mf.Sequential:
    """The book's SimpleConvNet (ch. 7), random weights: conv 30x5x5, ReLU, 2x2 max-pool,
    Dense 4320→100, ReLU, Dense 100→10, softmax."""
    return mf.Sequential(
        mf.Conv2D(1, 30, 5),
        mf.ReLU(),
        mf.MaxPool2D(2),
        mf.Flatten(),
        mf.Dense(4320, 100),
        mf.ReLU(),
        mf.Dense(100, 10),
        mf.Softmax(),
    )
