"""Backend selection: which array engine minifw's layers compute on.

The choice, in order of precedence:

1. ``with minifw.backend.use(name):`` — per thread / asyncio task (a ``ContextVar``);
2. ``minifw.backend.set_default(name)``;
3. the ``MINIFW_BACKEND`` environment variable, read once, the first time a backend is
   needed (never at import; an empty value counts as unset);
4. ``"numpy"``.

Each engine lives in one small module here that exposes ``load() -> Backend``; an engine's
package is imported only when that backend is chosen.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import threading
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

from ..errors import BackendError
from ._base import Backend

__all__ = [
    "Backend",
    "ENV_VAR",
    "NAMES",
    "available",
    "backend_of",
    "current",
    "get",
    "set_default",
    "unavailable",
    "use",
]

ENV_VAR = "MINIFW_BACKEND"

# name -> (module, the package it needs, how to install it)
_REGISTRY: dict[str, tuple[str, str, str]] = {
    "numpy": ("._numpy", "numpy", "pip install numpy"),
    "cupy": ("._cupy", "cupy", 'pip install "minifw[cuda12]" (or "minifw[cuda13]")'),
    "array_api_strict": ("._strict", "array_api_strict", "pip install array-api-strict"),
    "torch": ("._torch", "torch", 'pip install "minifw[torch]"'),
    "jax": ("._jax", "jax", 'pip install "minifw[jax]"'),
    "dask": ("._dask", "dask", 'pip install "minifw[dask]"'),
}
NAMES: tuple[str, ...] = tuple(_REGISTRY)

# Which backend owns an array, by the top-level package of its type's module.
_OWNER_PACKAGE = {
    "numpy": "numpy",
    "cupy": "cupy",
    "array_api_strict": "array_api_strict",
    "torch": "torch",
    "jax": "jax",
    "jaxlib": "jax",
    "dask": "dask",
}

_loaded: dict[str, Backend] = {}
_lock = threading.Lock()
_default: str | None = None
_env_read = False
_env_value: str | None = None
_ctx: ContextVar[Backend | None] = ContextVar("minifw_backend", default=None)


def _check_name(name: object, source: str) -> str:
    if not isinstance(name, str) or name not in _REGISTRY:
        valid = ", ".join(NAMES)
        raise BackendError(f"unknown backend {name!r} (from {source}); valid names: {valid}")
    return name


def get(name: str, *, source: str = "the call") -> Backend:
    """The :class:`Backend` called ``name``, importing its engine on first use.

    Raises :class:`minifw.BackendError` for an unknown name or an engine that cannot run
    here, saying why and how to fix it.
    """
    b = _loaded.get(name) if isinstance(name, str) else None
    if b is not None:
        return b
    name = _check_name(name, source)
    module, package, fix = _REGISTRY[name]
    with _lock:
        if name in _loaded:
            return _loaded[name]
        try:
            mod = importlib.import_module(module, __name__)
            b = mod.load()
        except BackendError:
            raise
        except ImportError as e:
            raise BackendError(
                f"backend {name!r} (from {source}) needs the package {package!r}, which "
                f"cannot be imported here ({e}); install it with: {fix}"
            ) from e
        except Exception as e:  # the engine is there but broken
            raise BackendError(
                f"backend {name!r} (from {source}) failed to start: {type(e).__name__}: {e}"
            ) from e
        _loaded[name] = b
    return b


def _from_env() -> str | None:
    global _env_read, _env_value
    if not _env_read:
        raw = os.environ.get(ENV_VAR, "").strip()
        _env_value = raw or None
        _env_read = True
    return _env_value


def current() -> Backend:
    """The backend in force here: ``use`` block, else ``set_default``, else the env var."""
    b = _ctx.get()
    if b is not None:
        return b
    if _default is not None:
        return get(_default, source="minifw.backend.set_default()")
    env = _from_env()
    if env is not None:
        return get(env, source=f"the environment variable {ENV_VAR}={env!r}")
    return get("numpy")


@contextlib.contextmanager
def use(name: str) -> Iterator[Backend]:
    """Run the block with backend ``name`` (checked when the block is entered).

    The choice is local to the current thread or asyncio task.
    """
    b = get(name, source="minifw.backend.use()")
    token = _ctx.set(b)
    try:
        yield b
    finally:
        _ctx.reset(token)


def set_default(name: str | None) -> None:
    """Make ``name`` the process-wide default (``None`` goes back to the env var)."""
    global _default
    if name is not None:
        get(name, source="minifw.backend.set_default()")
    _default = name


def unavailable() -> dict[str, str]:
    """For each known backend that cannot run here, the reason why."""
    out: dict[str, str] = {}
    for n in NAMES:
        try:
            get(n)
        except BackendError as e:
            out[n] = str(e)
    return out


def available() -> list[str]:
    """Names of the backends usable on this machine (this imports each engine once)."""
    bad = unavailable()
    return [n for n in NAMES if n not in bad]


def backend_of(x: Any) -> Backend | None:
    """The loaded backend whose array type ``x`` is, or ``None`` (lists, scalars, unknown)."""
    pkg = type(x).__module__.partition(".")[0]
    name = _OWNER_PACKAGE.get(pkg)
    if name is None:
        return None
    return get(name)


Backend.registry = sys.modules[__name__]


def _reset_for_tests() -> None:
    """Forget the env var and the default (tests only); with the NumPy engine loaded, also
    the ``MINIFW_NUM_THREADS`` / ``MINIFW_FUSED_GEMM`` values it read (the next
    ``minifw.backend._numpy.load()`` or large batch reads them again)."""
    global _default, _env_read, _env_value
    _default = None
    _env_read = False
    _env_value = None
    numpy_engine = sys.modules.get(__name__ + "._numpy")
    if numpy_engine is not None:
        numpy_engine.reset_env_for_tests()
