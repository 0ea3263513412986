"""The worked examples of "Deep Learning from Scratch" ch. 3, to the printed precision.

The reference computed in float64 (NumPy's default); these tests do the same with
``dtype="float64"`` and round to the printed digits, and also check the float32 default
within float32 precision.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from conftest import assert_namespace

import minifw as mf
from minifw import functional as F

W = [[0.1, 0.2, 0.3], [0.5, 0.6, 0.3]]
THREE_LAYER = {
    "0.weight": [[0.3, 0.1], [0.6, 0.1], [0.5, 0.2]],
    "0.bias": [1, 1],
    "2.weight": [[0.1, 0.1, 0.5], [0.8, 0.3, 0.2]],
    "2.bias": [0.1, 0.4, 0.5],
    "4.weight": [[0.3], [0.1], [0.4]],
    "4.bias": [0.5],
}


def rounded(a: object, digits: int) -> np.ndarray:
    return np.round(mf.to_numpy(a).astype(np.float64), digits)


def test_step_on_a_matrix(backend_name: str) -> None:
    with mf.backend.use(backend_name):
        y = F.step([[-1.0, 2.0], [0.0, 2.0]])
    assert_namespace(y, backend_name)
    np.testing.assert_array_equal(mf.to_numpy(y), [[0, 1], [0, 1]])


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_dense_then_sigmoid(backend_name: str, dtype: str) -> None:
    with mf.backend.use(backend_name):
        layer = mf.Dense(2, 3, dtype=dtype)
        layer.weight = W
        layer.bias = 1  # a scalar fills the bias, as b1 = 1 in the reference
        model = mf.Sequential(layer, mf.Sigmoid())
        z = layer([1, 2])
        y1 = model([1, 2])
        y2 = model([[1, 2]])
    assert_namespace(y1, backend_name)
    assert tuple(y1.shape) == (3,) and tuple(y2.shape) == (1, 3)
    tol = 0 if dtype == "float64" else 1e-6
    expect_z = [2.1, 2.4, 1.9]
    expect_y = [0.89090318, 0.9168273, 0.86989153]
    if dtype == "float64":
        np.testing.assert_array_equal(rounded(z, 8), expect_z)
        np.testing.assert_array_equal(rounded(y1, 8), expect_y)
        np.testing.assert_array_equal(rounded(y2, 8), [expect_y])
    else:
        np.testing.assert_allclose(mf.to_numpy(y1), expect_y, atol=tol)
        np.testing.assert_allclose(mf.to_numpy(y2), [expect_y], atol=tol)
        assert mf.to_numpy(y1).dtype == np.float32


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_three_layer_network(backend_name: str, dtype: str) -> None:
    with mf.backend.use(backend_name):
        model = mf.Sequential(
            mf.Dense(3, 2, dtype=dtype),
            mf.Sigmoid(),
            mf.Dense(2, 3, dtype=dtype),
            mf.Sigmoid(),
            mf.Dense(3, 1, dtype=dtype),
            mf.Sigmoid(),
        )
        model.load_state_dict(THREE_LAYER)
        y1 = model([1, 1, 1])
        y2 = model([[1, 1, 1]])
    assert_namespace(y1, backend_name)
    assert tuple(y1.shape) == (1,) and tuple(y2.shape) == (1, 1)
    if dtype == "float64":
        np.testing.assert_array_equal(rounded(y1, 8), [0.74614674])
        np.testing.assert_array_equal(rounded(y2, 8), [[0.74614674]])
    else:
        np.testing.assert_allclose(mf.to_numpy(y2), [[0.74614674]], atol=1e-6)


@pytest.mark.parametrize(
    ("x", "expect", "digits"),
    [
        ([1.0, 2.0, 3.0], [0.09003057, 0.24472847, 0.66524096], 8),
        ([1010.0, 1000.0, 990.0], [9.99954600e-01, 4.53978686e-05, 2.06106005e-09], None),
        ([1000.0, 1001.0, 2000.0], [0.0, 0.0, 1.0], 8),
    ],
)
def test_softmax_worked_values(
    backend_name: str, x: list, expect: list, digits: int | None
) -> None:
    with mf.backend.use(backend_name), warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow / invalid-value warning
        b = mf.backend.current()
        y = F.softmax(b.asarray(np.array(x, dtype=np.float64)))
        y32 = F.softmax(b.asarray(np.array(x, dtype=np.float32)))
    assert_namespace(y, backend_name)
    yn = mf.to_numpy(y)
    assert not np.isnan(yn).any() and not np.isnan(mf.to_numpy(y32)).any()
    if digits is None:  # printed in scientific notation: 9 significant digits
        np.testing.assert_allclose(yn, expect, rtol=5e-9)
    else:
        np.testing.assert_array_equal(np.round(yn, digits), expect)
    np.testing.assert_allclose(mf.to_numpy(y32), expect, rtol=1e-5, atol=1e-7)
