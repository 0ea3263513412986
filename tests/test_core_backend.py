"""Backend selection: env var, use(), set_default(), errors, isolation, lazy imports."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
from conftest import assert_namespace

import minifw as mf
from minifw import backend


def py(code: str, env_value: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "MINIFW_BACKEND"}
    if env_value is not None:
        env["MINIFW_BACKEND"] = env_value
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )


def test_default_is_numpy() -> None:
    b = backend.current()
    assert b.name == "numpy" and b.xp is np


def test_use_switches_and_restores() -> None:
    with backend.use("array_api_strict") as b:
        assert backend.current() is b and b.name == "array_api_strict"
        with backend.use("numpy"):
            assert backend.current().name == "numpy"
        assert backend.current().name == "array_api_strict"
    assert backend.current().name == "numpy"


def test_use_is_per_thread() -> None:
    seen: dict[str, str] = {}
    inside = threading.Event()
    done = threading.Event()

    def worker() -> None:
        inside.wait(5)
        seen["thread"] = backend.current().name
        done.set()

    t = threading.Thread(target=worker)
    t.start()
    with backend.use("array_api_strict"):
        inside.set()
        done.wait(5)
        seen["main"] = backend.current().name
    t.join()
    assert seen == {"thread": "numpy", "main": "array_api_strict"}


def test_use_is_per_asyncio_task() -> None:
    async def in_strict() -> str:
        with backend.use("array_api_strict"):
            await asyncio.sleep(0.01)
            return backend.current().name

    async def plain() -> str:
        await asyncio.sleep(0.005)
        return backend.current().name

    async def both() -> list[str]:
        return list(await asyncio.gather(in_strict(), plain()))

    assert asyncio.run(both()) == ["array_api_strict", "numpy"]


def test_unknown_name_in_use() -> None:
    with pytest.raises(mf.BackendError) as e:
        with backend.use("nmupy"):
            pass
    msg = str(e.value)
    assert "'nmupy'" in msg and "minifw.backend.use()" in msg and "numpy, cupy" in msg


@pytest.mark.skipif(importlib.util.find_spec("cupy") is not None, reason="cupy is installed here")
def test_cupy_missing_says_how_to_fix() -> None:
    with pytest.raises(mf.BackendError, match=r"'cupy'.*pip install \"minifw\[cuda12\]\""):
        backend.get("cupy")
    assert "cupy" not in backend.available()
    assert "cupy" in backend.unavailable()


def test_available_lists_the_portable_ones() -> None:
    names = backend.available()
    assert "numpy" in names and "array_api_strict" in names
    assert set(names) <= set(backend.NAMES)


def test_set_default() -> None:
    try:
        backend.set_default("array_api_strict")
        assert backend.current().name == "array_api_strict"
        with backend.use("numpy"):
            assert backend.current().name == "numpy"
        with pytest.raises(mf.BackendError, match="set_default"):
            backend.set_default("bogus")
        assert backend.current().name == "array_api_strict"
    finally:
        backend.set_default(None)
    assert backend.current().name == "numpy"


def test_model_to_moves_parameters_and_keeps_results() -> None:
    mf.seed(3)
    model = mf.Sequential(mf.Dense(4, 3), mf.Tanh(), mf.Dense(3, 2), mf.Softmax())
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    ref = model.predict(x)
    assert model.to("array_api_strict") is model
    assert model.backend.name == "array_api_strict"
    for p in model.parameters():
        assert_namespace(p, "array_api_strict")
    y = model(x)
    assert_namespace(y, "array_api_strict")
    np.testing.assert_allclose(mf.to_numpy(y), ref, rtol=1e-6)
    model.to("numpy")
    np.testing.assert_array_equal(model.predict(x), ref)


def test_seed_gives_identical_weights_on_every_backend() -> None:
    sds = []
    for name in ("numpy", "array_api_strict"):
        with backend.use(name):
            mf.seed(7)
            sds.append(mf.Sequential(mf.Dense(5, 4), mf.ReLU(), mf.Dense(4, 2)).state_dict())
    for k in sds[0]:
        np.testing.assert_array_equal(sds[0][k], sds[1][k])
    mf.seed(8)
    other = mf.Dense(5, 4).state_dict()
    assert not np.array_equal(other["weight"], sds[0]["0.weight"])


def test_mixing_backends_in_a_sequential_is_refused() -> None:
    a = mf.Dense(3, 3)
    with backend.use("array_api_strict"):
        b = mf.Dense(3, 3)
    with pytest.raises(mf.BackendError, match=r"item 1 .*'array_api_strict'.*\.to\('numpy'\)"):
        mf.Sequential(a, b)


def test_foreign_array_converted_at_the_edge() -> None:
    with backend.use("array_api_strict") as b:
        xs = b.asarray(np.ones((2, 3), np.float32))
    model = mf.Sequential(mf.Dense(3, 2))
    y = model(xs)
    assert type(y) is np.ndarray and y.shape == (2, 2)


# -- the environment variable, in fresh processes -------------------------------------------

PROBE = "import minifw as mf; print(mf.backend.current().name)"


def test_env_var_valid() -> None:
    r = py(PROBE, "array_api_strict")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "array_api_strict"


def test_env_var_empty_means_unset() -> None:
    for value in ("", "   "):
        r = py(PROBE, value)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == "numpy"


def test_env_var_unknown_is_a_clear_error_at_first_use_not_import() -> None:
    code = "import minifw as mf; print('imported', flush=True); mf.backend.current()"
    r = py(code, "tensorflow")
    assert r.stdout.strip() == "imported"  # import alone never reads it
    assert r.returncode != 0
    assert "BackendError" in r.stderr
    assert "'tensorflow'" in r.stderr and "MINIFW_BACKEND" in r.stderr and "numpy" in r.stderr


def test_env_var_read_once() -> None:
    code = (
        "import os, minifw as mf; a = mf.backend.current().name; "
        "os.environ['MINIFW_BACKEND'] = 'numpy'; print(a, mf.backend.current().name)"
    )
    r = py(code, "array_api_strict")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["array_api_strict", "array_api_strict"]


def test_import_loads_no_optional_engine() -> None:
    code = (
        "import sys, minifw as mf\n"
        "m = mf.Sequential(mf.Dense(3, 2), mf.Softmax()); m.predict([[1, 2, 3]])\n"
        "bad = [n for n in ('cupy', 'torch', 'jax', 'dask', 'array_api_strict', 'array_api_compat',"
        " 'pooch', 'matplotlib', 'tqdm') if n in sys.modules]\n"
        "print(bad)"
    )
    r = py(code, None)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
