"""MNIST and Fashion-MNIST: find the IDX files, verify them, download them if need be."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._atomic import temp_path_beside
from ..errors import FormatError
from ._idx import _read

__all__ = ["DATASETS", "Dataset", "cache_dir", "load_fashion_mnist", "load_mnist"]

DATA_ENV_VAR = "MINIFW_DATA_DIR"


@dataclass(frozen=True)
class Dataset:
    """Where a dataset's four IDX files live and what their decompressed bytes hash to."""

    name: str  # "mnist"; also the sub-folder of $MINIFW_DATA_DIR and of the cache
    title: str
    files: dict[tuple[str, str], str]  # (split, "images"|"labels") -> base file name
    sha256: dict[str, str]  # base file name -> SHA-256 of the decompressed file
    mirrors: tuple[str, ...]  # base URLs; "<mirror>/<base name>.gz" is fetched
    system_dirs: tuple[str, ...] = field(default=())


_FILES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}

DATASETS: dict[str, Dataset] = {
    "mnist": Dataset(
        name="mnist",
        title="MNIST",
        files=_FILES,
        # The MNIST test checksums are those of ../shared/data/README.md; the training ones
        # are the widely published checksums of the canonical files, decompressed.
        sha256={
            "train-images-idx3-ubyte": (
                "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"
            ),
            "train-labels-idx1-ubyte": (
                "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"
            ),
            "t10k-images-idx3-ubyte": (
                "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"
            ),
            "t10k-labels-idx1-ubyte": (
                "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"
            ),
        },
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
    ),
    "fashion-mnist": Dataset(
        name="fashion-mnist",
        title="Fashion-MNIST",
        files=_FILES,
        sha256={
            "train-images-idx3-ubyte": (
                "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"
            ),
            "train-labels-idx1-ubyte": (
                "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"
            ),
            "t10k-images-idx3-ubyte": (
                "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"
            ),
            "t10k-labels-idx1-ubyte": (
                "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"
            ),
        },
        mirrors=(
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "https://storage.googleapis.com/tensorflow/tf-keras-datasets/",
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        ),
        # Debian's dataset-fashion-mnist package
        system_dirs=("/usr/share/datasets/fashion-mnist",),
    ),
}

_DOWNLOAD_TIMEOUT_S = 60


def cache_dir() -> Path:
    """The download cache: ``$XDG_CACHE_HOME/minifw``, by default ``~/.cache/minifw``."""
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "minifw"


def _candidates(folder: Path, base: str) -> list[Path]:
    return [folder / (base + ".gz"), folder / base]


def _search_dirs(ds: Dataset, data_dir: str | os.PathLike[str] | None) -> list[tuple[str, Path]]:
    """``(description, folder)`` in the order they are searched (the cache last)."""
    out: list[tuple[str, Path]] = []
    if data_dir is not None:
        d = Path(data_dir)
        if not d.is_dir():
            raise FileNotFoundError(
                f"data_dir={os.fspath(data_dir)!r} is not a directory (it should hold the "
                f"{ds.title} IDX files themselves, e.g. {ds.files[('test', 'images')]}.gz)"
            )
        out.append(("data_dir", d))
    env = os.environ.get(DATA_ENV_VAR, "").strip()
    if env:
        out.append((f"${DATA_ENV_VAR}/{ds.name}", Path(env) / ds.name))
    for s in ds.system_dirs:
        out.append(("system data folder", Path(s)))
    out.append(("cache", cache_dir() / ds.name))
    return out


def _load_file(
    ds: Dataset,
    base: str,
    *,
    data_dir: str | os.PathLike[str] | None,
    download: bool,
    verify: bool,
    mirrors: Sequence[str] | None,
) -> np.ndarray:
    """Find ``base`` (.gz or raw) in the search order, or download it; read and verify."""
    dirs = _search_dirs(ds, data_dir)
    want = ds.sha256.get(base) if verify else None
    for _, folder in dirs:
        for path in _candidates(folder, base):
            if path.is_file():
                arr, digest = _read(path)
                if want is not None and digest != want:
                    raise FormatError(
                        f"{path}: SHA-256 of the decompressed data is {digest}, expected "
                        f"{want} for {ds.title} {base} (a damaged or different file; replace "
                        "it, or pass verify=False to use a custom file as it is)"
                    )
                return arr
    looked = "; ".join(f"{what}: {folder}" for what, folder in dirs)
    if not os.environ.get(DATA_ENV_VAR, "").strip():
        looked += f"; ${DATA_ENV_VAR} is not set"
    how = (
        f"put {base}.gz (or the uncompressed {base}) in one of these folders, pass "
        f"data_dir=FOLDER, or set {DATA_ENV_VAR} to a folder with a {ds.name}/ sub-folder"
    )
    if not download:
        raise FileNotFoundError(
            f"{ds.title} file {base}(.gz) not found and download=False. Looked in {looked}. "
            f"To fix: {how}, or allow download=True."
        )
    cache = cache_dir() / ds.name
    return _download(ds, base, cache, want, list(mirrors or ds.mirrors), looked, how)


def _progress_bar(fname: str) -> Any:
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return False
    # total=1 until pooch sets the real size: a bar with no total has no truth value
    bar = tqdm(
        desc=f"Downloading {fname}", total=1, unit="B", unit_scale=True, leave=False, disable=None
    )
    if bar.disable:  # not a terminal
        bar.close()
        return False
    return bar


def _download(
    ds: Dataset,
    base: str,
    cache: Path,
    want: str | None,
    mirrors: list[str],
    looked: str,
    how: str,
) -> np.ndarray:
    """Try each mirror in turn; only a complete, valid, verified file enters the cache."""
    try:
        import pooch
    except ImportError as e:
        raise FileNotFoundError(
            f"{ds.title} file {base}(.gz) not found (looked in {looked}) and downloading "
            f'needs the optional package pooch: pip install "minifw[data]". Or: {how}.'
        ) from e
    fname = base + ".gz"
    final = cache / fname
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FileNotFoundError(
            f"{ds.title} file {base}(.gz) not found (looked in {looked}) and the cache folder "
            f"{cache} cannot be created ({e}); set XDG_CACHE_HOME or {how}"
        ) from e
    failures: list[str] = []
    bad_data = False
    for mirror in mirrors:
        url = mirror.rstrip("/") + "/" + fname
        tmp = temp_path_beside(final)
        try:
            bar = _progress_bar(fname)
            try:
                pooch.HTTPDownloader(progressbar=bar, timeout=_DOWNLOAD_TIMEOUT_S)(url, tmp, None)
            finally:
                if bar is not False:
                    bar.close()
            try:
                arr, digest = _read(tmp)
            except FormatError as e:
                bad_data = True
                failures.append(f"{url}: not a valid IDX file ({str(e).split(': ', 1)[-1]})")
                continue
            if want is not None and digest != want:
                bad_data = True
                failures.append(
                    f"{url}: SHA-256 of the decompressed data is {digest}, expected {want}"
                )
                continue
            os.replace(tmp, final)
            tmp = ""
            return arr
        except OSError as e:  # network errors (requests' are OSErrors too): next mirror
            failures.append(f"{url}: {type(e).__name__}: {e}")
        finally:
            if tmp:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
    tried = "\n  ".join(failures) or "(no mirrors given)"
    if bad_data:
        raise FormatError(
            f"{ds.title} {fname}: no mirror gave a valid file (nothing was written to {cache}):"
            f"\n  {tried}"
        )
    raise FileNotFoundError(
        f"{ds.title} file {base}(.gz) not found (looked in {looked}) and the download failed "
        f"from every mirror:\n  {tried}\nTo fix: check the network, or {how}."
    )


def _load(
    ds: Dataset,
    split: str,
    *,
    normalize: bool,
    flatten: bool,
    one_hot: bool,
    dtype: Any,
    data_dir: str | os.PathLike[str] | None,
    download: bool,
    verify: bool,
    mirrors: Sequence[str] | None,
) -> tuple[np.ndarray, np.ndarray]:
    if split not in ("train", "test"):
        raise ValueError(f"{ds.title}: split must be 'train' or 'test', got {split!r}")
    dt = np.dtype(dtype)
    if dt.kind != "f":
        raise TypeError(f"{ds.title}: dtype must be a float dtype, got {dtype!r}")
    if isinstance(mirrors, str):
        mirrors = [mirrors]
    kw: dict[str, Any] = dict(data_dir=data_dir, download=download, verify=verify, mirrors=mirrors)
    img_name = ds.files[(split, "images")]
    lab_name = ds.files[(split, "labels")]
    images = _load_file(ds, img_name, **kw)
    labels = _load_file(ds, lab_name, **kw)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise FormatError(
            f"{ds.title} {img_name}: expected uint8 images of shape (N, 28, 28), got "
            f"{images.dtype} {images.shape}"
        )
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise FormatError(
            f"{ds.title} {lab_name}: expected uint8 labels of shape (N,), got "
            f"{labels.dtype} {labels.shape}"
        )
    if labels.shape[0] != images.shape[0]:
        raise FormatError(
            f"{ds.title} {split}: {images.shape[0]} images but {labels.shape[0]} labels"
        )
    if labels.size and int(labels.max()) > 9:
        raise FormatError(f"{ds.title} {lab_name}: labels must be 0..9, found {int(labels.max())}")
    x: np.ndarray = images
    if normalize:
        x = images.astype(dt)
        x /= dt.type(255)
    if flatten:
        x = x.reshape(x.shape[0], 28 * 28)
    y = labels.astype(np.int64)
    if one_hot:
        y1 = np.zeros((y.shape[0], 10), dtype=dt)
        y1[np.arange(y.shape[0]), y] = 1
        return x, y1
    return x, y


_DOC = """Load the {title} {{split}} set as NumPy arrays ``(x, y)``.

    ``x``: float in [0, 1] of ``dtype`` when ``normalize`` (else uint8 0-255), shape
    ``(N, 784)`` when ``flatten`` else ``(N, 28, 28)``. ``y``: int64 class indices, or
    ``(N, 10)`` one-hot rows of ``dtype`` when ``one_hot``.

    Files (``{base}.gz`` or raw ``{base}``, the canonical names) are looked for in
    ``data_dir``, then ``$MINIFW_DATA_DIR/{name}/``{system}, then the cache
    (:func:`cache_dir`), and are otherwise downloaded from ``mirrors`` (default: the
    canonical mirrors, tried in turn) into the cache. With ``verify`` the SHA-256 of each
    file's decompressed bytes is checked; a mismatch or a malformed file raises
    :class:`minifw.FormatError` naming it. No file anywhere: ``FileNotFoundError`` saying
    where it looked and how to supply the files.
    """


def _loader(key: str, fn_name: str, system: str) -> Callable[..., tuple[np.ndarray, np.ndarray]]:
    """The public loader of data set ``key`` (one function per data set, one body)."""
    ds = DATASETS[key]

    def load(
        split: str = "train",
        *,
        normalize: bool = True,
        flatten: bool = True,
        one_hot: bool = False,
        dtype: Any = np.float32,
        data_dir: str | os.PathLike[str] | None = None,
        download: bool = True,
        verify: bool = True,
        mirrors: Sequence[str] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        return _load(
            DATASETS[key], split, normalize=normalize, flatten=flatten, one_hot=one_hot, dtype=dtype,
            data_dir=data_dir, download=download, verify=verify, mirrors=mirrors,
        )  # fmt: skip

    load.__name__ = load.__qualname__ = fn_name
    load.__doc__ = _DOC.format(
        title=ds.title, base="t10k-images-idx3-ubyte", name=ds.name, system=system
    )
    return load


load_mnist = _loader("mnist", "load_mnist", "")
load_fashion_mnist = _loader(
    "fashion-mnist", "load_fashion_mnist", ", then Debian's ``/usr/share/datasets/fashion-mnist/``"
)
