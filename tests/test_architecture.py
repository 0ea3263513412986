"""The library's architecture, checked: a custom layer written to the public contract works
everywhere a built-in does; the import graph has no cycles; no code outside minifw/backend/
branches on an engine's name or a ``.fast`` flag; ``import minifw`` imports only NumPy."""

from __future__ import annotations

import ast
import importlib
import os
import pkgutil
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import assert_namespace

import minifw as mf
from minifw import optim


@mf.register_layer
class Scale(mf.Module):
    """y = x * weight, a learnable per-feature scale."""

    def __init__(self, features: int):
        super().__init__()
        self.features = features
        self.add_parameter("weight", np.ones(features, np.float32))

    def forward(self, x):
        if self.training:
            self.x = x
        return x * self.weight

    def backward(self, grad):
        self.grads["weight"] = self.xp.sum(grad * self.x, axis=0)
        return grad * self.weight

    def get_config(self):
        return {"features": self.features}


ENGINES = ["numpy", "array_api_strict", "torch"]
PACKAGE = Path(mf.__file__).resolve().parent


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    if name == "torch":
        pytest.importorskip("torch")
    return name


def blobs(n: int = 240, d: int = 4, c: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    y = (x @ rng.standard_normal((d, c))).argmax(axis=1)
    return x, y


def scaled_mlp(dtype: str = "float32") -> mf.Sequential:
    mf.seed(3)
    return mf.Sequential(
        mf.Dense(4, 6, dtype=dtype), mf.ReLU(), Scale(6), mf.Dense(6, 3, dtype=dtype), mf.Softmax()
    )


def layer_by_layer(model: Any, x: Any) -> Any:
    """The training-mode forward: layer by layer, never the inference plan."""
    model.train()
    try:
        return model(x)
    finally:
        model.eval()


# -- a: the custom-layer contract --------------------------------------------------------------


def test_custom_layer_inside_sequential_keeps_the_dense_runs_fused(engine: str) -> None:
    with mf.backend.use(engine):
        model = scaled_mlp()
    model[2].weight = np.linspace(0.5, 2.0, 6)
    assert mf.plan.explain(model) == (f"{engine}: [Dense 4→6 relu] | Scale | [Dense 6→3 softmax]")
    x = blobs(10)[0]
    y = model(x)
    assert_namespace(y, engine)
    assert_namespace(model[2].weight, engine)
    ref = layer_by_layer(model, x)
    np.testing.assert_allclose(mf.to_numpy(y), mf.to_numpy(ref), rtol=1e-6, atol=1e-7)
    each = x
    for m in model:  # eval mode, each layer called in turn
        each = m(each)
    np.testing.assert_allclose(mf.to_numpy(y), mf.to_numpy(each), rtol=1e-6, atol=1e-7)
    # the same numbers as the model without Scale whose first layer absorbed the scale
    with mf.backend.use(engine):
        plain = mf.Sequential(mf.Dense(4, 6), mf.ReLU(), mf.Dense(6, 3), mf.Softmax())
    sd = model.state_dict()
    scale = sd.pop("2.weight")
    plain.load_state_dict(
        {"0.weight": sd["0.weight"], "0.bias": sd["0.bias"],
         "2.weight": scale[:, None] * sd["3.weight"], "2.bias": sd["3.bias"]}
    )  # fmt: skip
    np.testing.assert_allclose(mf.to_numpy(y), mf.to_numpy(plain(x)), rtol=1e-5, atol=1e-6)


def test_custom_layer_in_summary(engine: str) -> None:
    with mf.backend.use(engine):
        model = scaled_mlp()
    lines: list[str] = []
    text = model.summary(print_fn=lines.append)
    assert lines == [text]
    row = next(line for line in text.splitlines() if "Scale" in line)
    assert row.split()[-2:] == ["6)", "6"]  # output (None, 6), 6 parameters
    assert model.num_parameters() == 4 * 6 + 6 + 6 + 6 * 3 + 3
    assert f"Total params: {model.num_parameters():,}" in text
    assert f"Backend: {engine}" in text


def test_custom_layer_trains_evaluates_and_predicts(engine: str) -> None:
    x, y = blobs()
    with mf.backend.use(engine):
        model = scaled_mlp()
    before = mf.to_numpy(model[2].weight).copy()
    hist = model.fit(
        x, y, optimizer=optim.Adam(0.02), epochs=6, batch_size=32, seed=0, progress=False
    )
    assert hist.history["loss"][-1] < hist.history["loss"][0]
    assert_namespace(model[2].weight, engine)
    assert not np.array_equal(mf.to_numpy(model[2].weight), before), "Scale was trained"
    res = model.evaluate(x, y, batch_size=50)
    assert set(res) == {"loss", "accuracy"} and res["accuracy"] > 0.8
    p = model.predict(x, batch_size=7)
    assert isinstance(p, np.ndarray) and p.shape == (len(x), 3)
    out = model(x)
    assert_namespace(out, engine)
    np.testing.assert_allclose(p, mf.to_numpy(out), rtol=1e-5, atol=1e-6)


def test_custom_layer_state_dict_save_and_load(engine: str, tmp_path: Path) -> None:
    with mf.backend.use(engine):
        model = scaled_mlp()
        model[2].weight = np.linspace(-1.0, 1.0, 6)
        sd = model.state_dict()
        assert set(sd) == {"0.weight", "0.bias", "2.weight", "3.weight", "3.bias"}
        other = scaled_mlp()
    assert isinstance(sd["2.weight"], np.ndarray)
    other.load_state_dict(sd)
    x = blobs(20)[0]
    want = mf.to_numpy(model(x))
    np.testing.assert_array_equal(mf.to_numpy(other(x)), want)
    for suffix in (".npz", ".safetensors"):
        if suffix == ".safetensors":
            pytest.importorskip("safetensors")
        path = tmp_path / f"m{suffix}"
        model.save(path)
        loaded = mf.load(path, backend=engine)
        assert isinstance(loaded[2], Scale) and loaded[2].features == 6
        assert mf.plan.explain(loaded) == mf.plan.explain(model)
        assert_namespace(loaded[2].weight, engine)
        got = loaded(x)
        assert_namespace(got, engine)
        np.testing.assert_array_equal(mf.to_numpy(got), want)
        for k, v in loaded.state_dict().items():
            np.testing.assert_array_equal(v, sd[k])


def test_custom_layer_moves_across_backends() -> None:
    names = [n for n in ENGINES if n not in mf.backend.unavailable()]
    model = scaled_mlp()
    model[2].weight = np.linspace(0.5, 1.5, 6)
    x = blobs(12)[0]
    want = model(x)
    for name in [*names[1:], "numpy"]:
        model.to(name)
        assert model[2].backend is mf.backend.get(name)
        assert_namespace(model[2].weight, name)
        assert mf.plan.explain(model).startswith(f"{name}: ")
        y = model(x)
        assert_namespace(y, name)
        np.testing.assert_allclose(mf.to_numpy(y), want, rtol=1e-5, atol=1e-6)
        model.train()  # backward runs on the new engine too
        model(x)
        dx = model.backward(np.ones((12, 3), np.float32))
        assert_namespace(dx, name)
        assert_namespace(model[2].grads["weight"], name)
        model.eval()


def test_library_gradcheck_on_the_custom_layer(engine: str) -> None:
    """The library's own helper, mf.gradcheck, checks Scale (float32 as written: gradcheck
    runs in float64 and restores the float32 weights) inside a model and on its own."""
    with mf.backend.use(engine):
        model = mf.Sequential(mf.Dense(4, 6), mf.Tanh(), Scale(6), mf.Dense(6, 3))
    model[2].weight = np.linspace(0.5, 1.5, 6)
    before = {k: v.copy() for k, v in model.state_dict().items()}
    x = np.random.default_rng(1).standard_normal((5, 4))
    worst = mf.gradcheck(model, x)
    assert set(worst) == {"x", "0.weight", "0.bias", "2.weight", "3.weight", "3.bias"}
    assert max(worst.values()) <= 1
    after = model.state_dict()
    assert all(
        np.array_equal(before[k], after[k]) and after[k].dtype == before[k].dtype for k in before
    )
    assert not model.training
    with mf.backend.use(engine):
        assert max(mf.gradcheck(Scale(3), x[:, :3]).values()) <= 1


def central_differences(f: Any, a: np.ndarray, h: float) -> np.ndarray:
    g = np.zeros_like(a, dtype=np.float64)
    for i in np.ndindex(a.shape):
        old = a[i]
        a[i] = old + h
        fp = f(a)
        a[i] = old - h
        fm = f(a)
        a[i] = old
        g[i] = (fp - fm) / (2 * h)
    return g


def test_custom_layer_gradients_by_finite_differences(engine: str) -> None:
    """A float64 model with Scale in the middle: dL/dx and dL/d(Scale.weight) from backward
    agree with central differences.

    Scale as written always holds a float32 weight (np.ones(features, np.float32); set_param
    keeps a parameter's dtype), so in a float64 model its weight stays float32 while its
    inputs and gradients are float64. Its weights are therefore set to dyadic values and
    perturbed by h = 2**-12, which float32 represents exactly: the loss is then evaluated in
    float64 at exactly w +- h."""
    with mf.backend.use(engine):
        model = mf.Sequential(
            mf.Dense(4, 6, dtype="float64"), mf.Tanh(), Scale(6), mf.Dense(6, 3, dtype="float64")
        )
    rng = np.random.default_rng(5)
    for m in (model[0], model[3]):
        m.weight = rng.uniform(-1, 1, m.weight.shape)
        m.bias = rng.uniform(-1, 1, m.bias.shape)
    w0 = np.array([0.5, -1.25, 2.0, 0.75, -0.5, 1.5])
    model[2].weight = w0
    x = rng.standard_normal((5, 4))
    r = rng.standard_normal((5, 3))
    b = model.backend

    def loss(xx: np.ndarray) -> float:
        return float(np.sum(r * mf.to_numpy(model(b.asarray(xx, "float64")))))

    model.train()
    out = model(b.asarray(x, "float64"))
    assert mf.to_numpy(out).dtype == np.float64
    dx = model.backward(b.asarray(r, "float64"))
    assert_namespace(dx, engine)
    dw = mf.to_numpy(model[2].grads["weight"])
    assert_namespace(model[2].grads["weight"], engine)
    assert dw.shape == (6,)

    num_dx = central_differences(loss, x.copy(), 1e-6)
    np.testing.assert_allclose(mf.to_numpy(dx), num_dx, rtol=1e-6, atol=1e-8)

    def loss_w(w: np.ndarray) -> float:
        model[2].weight = w
        return loss(x)

    num_dw = central_differences(loss_w, w0.copy(), 2.0**-12)
    model[2].weight = w0
    np.testing.assert_allclose(dw, num_dw, rtol=1e-5, atol=1e-8)
    model.eval()


# -- b: the import graph ------------------------------------------------------------------------

#: packages that only minifw.bench's optional engines import
OPTIONAL = {"torch", "jax", "jaxlib", "onnx", "onnxruntime", "matplotlib", "cupy", "dask"}


def _all_modules() -> list[str]:
    """The package's Python modules (a compiled extension, the optional kernel
    ``minifw.backend._native``, imports nothing and has no source to parse)."""
    found = sorted(n for _, n, _ in pkgutil.walk_packages(mf.__path__, "minifw."))
    return ["minifw"] + [n for n in found if _is_module(n)]


def _module_file(name: str) -> Path:
    rel = Path(*name.split(".")[1:])
    init = PACKAGE / rel / "__init__.py"
    return init if init.is_file() else (PACKAGE / rel).with_suffix(".py")


def _is_module(name: str) -> bool:
    rel = Path(*name.split(".")[1:])
    return (PACKAGE / rel / "__init__.py").is_file() or (PACKAGE / rel).with_suffix(".py").is_file()


def _type_checking_only(tree: ast.AST) -> set[int]:
    """ids of the import nodes under ``if TYPE_CHECKING:`` (never run)."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for sub in node.body:
                skip.update(id(n) for n in ast.walk(sub))
    return skip


def import_graph() -> dict[str, set[str]]:
    """module -> the minifw modules it imports, from the AST of its file: every import
    statement, at module level or inside functions; relative imports resolved."""
    graph: dict[str, set[str]] = {}
    for name in _all_modules():
        path = _module_file(name)
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        skip = _type_checking_only(tree)
        edges: set[str] = set()
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.Import):
                edges.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[: len(parts) - node.level + 1])
                    base = f"{base}.{node.module}" if node.module else base
                else:
                    base = node.module or ""
                for a in node.names:
                    sub = f"{base}.{a.name}"
                    edges.add(sub if _is_module(sub) else base)
        graph[name] = {e for e in edges if e.split(".")[0] == "minifw" and e != name}
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each as one
    cycle through its modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    comps: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(comp)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    cycles = []
    for comp in comps:  # one concrete cycle: a path back to the start inside the component
        members, start = set(comp), min(comp)
        path, seen = [start], {start}
        while True:
            nxt = sorted(w for w in graph[path[-1]] if w in members)
            back = [w for w in nxt if w == start]
            if back or not nxt:
                break
            step = next((w for w in nxt if w not in seen), None)
            if step is None:
                break
            path.append(step)
            seen.add(step)
        cycles.append([*path, start])
    return cycles


def test_every_module_imports() -> None:
    failed = {}
    for name in _all_modules():
        if name.rsplit(".", 1)[-1] == "__main__":
            continue  # `python -m` entry points run their program when imported
        try:
            importlib.import_module(name)
        except ImportError as e:
            missing = getattr(e, "name", None) or ""
            if name.startswith("minifw.bench.") and missing.split(".")[0] in OPTIONAL:
                continue  # an optional engine of the benchmark that is not installed here
            failed[name] = repr(e)
    assert failed == {}


def test_the_import_graph_has_no_cycles() -> None:
    graph = import_graph()
    assert set(graph) == set(_all_modules())
    # sanity: the resolver sees relative, absolute and function-level imports
    assert "minifw.backend" in graph["minifw.layers.module"]
    assert "minifw.errors" in graph["minifw.backend"]
    assert "minifw" in graph["minifw.bench.engines"]  # `import minifw as mf` in a function
    cycles = find_cycles(graph)
    assert cycles == [], "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_cycle_finder_finds_cycles() -> None:
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(g) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


# -- c: no engine names outside minifw/backend/ ------------------------------------------------

FORBIDDEN = re.compile(r"\.name (==|!=|in) |\._?fast\b|type\([a-z_]+\) is np\.ndarray")
#: What the pattern also matches that is not an engine test, removed from a line before it
#: is searched: comparisons of a dtype's name (``a.dtype.name != want``) anywhere, and in
#: minifw/bench/ only, comparisons of the benchmark's own Engine objects' names (display
#: labels such as "minifw numpy model(x)" or "torch eager", not backends).
DTYPE_NAME = re.compile(r"dtype\.name (==|!=|in) ")
BENCH_ENGINE_NAME = re.compile(r"\be\.name (==|!=) ref_name\b")


def test_no_backend_name_or_fast_flag_tests_outside_the_backend() -> None:
    hits = []
    root = PACKAGE.parent
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel.startswith("minifw/backend/"):
            continue
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            rest = DTYPE_NAME.sub("", line)
            if rel.startswith("minifw/bench/"):
                rest = BENCH_ENGINE_NAME.sub("", rest)
            if FORBIDDEN.search(rest):
                hits.append(f"{rel}:{i}: {line.strip()}")
    assert hits == []


def test_the_engine_test_pattern() -> None:
    for bad in ("if b.name == 'numpy':", "if model.backend.name in (", "if self._fast:",
                "b.fast", "if type(x) is np.ndarray:"):  # fmt: skip
        assert FORBIDDEN.search(DTYPE_NAME.sub("", bad)), bad
    assert not FORBIDDEN.search(DTYPE_NAME.sub("", "if a.dtype.name != want_dtype:"))


# -- d: import minifw imports only NumPy -------------------------------------------------------


def test_import_minifw_imports_only_numpy() -> None:
    code = (
        "import sys, minifw; print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'torch','jax','dask','cupy','array_api_strict','tqdm','threadpoolctl','safetensors',"
        "'onnx','matplotlib','scipy'}))"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    env.pop("MINIFW_BACKEND", None)
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_submodules_work_without_a_second_import(data_dir: Path) -> None:
    code = (
        "import numpy as np, minifw as mf\n"
        "x, y = mf.datasets.load_mnist(split='test', download=False)\n"
        "assert len(x) == len(y) > 0, (len(x), len(y))\n"
        "opt = mf.optim.SGD(0.1)\n"
        "loss = mf.losses.CrossEntropy()\n"
        "print(type(opt).__name__, type(loss).__name__, x.shape[1:])\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), MINIFW_DATA_DIR=str(data_dir))
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[:2] == ["SGD", "CrossEntropy"]
