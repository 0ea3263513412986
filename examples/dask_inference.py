"""Batch inference on a dask cluster over a dataset larger than memory.

The data is a ``.npy`` file opened as a memory map: each chunk of rows is read by the
worker that classifies it, so no process ever holds more than a few chunks. The model is
copied to the workers once (one key of the task graph), and ``model.predict`` on the dask
array returns a lazy result chunked like the input; only the accuracy (a number) and,
with ``--out``, the predicted labels (1 byte per row, written by the workers into a
``.npy`` file) come back.

    # a LocalCluster of 2 worker processes, a generated 30,000-row file (94 MB)
    python examples/dask_inference.py
    # a real cluster (``dask scheduler`` + ``dask worker tcp://HOST:8786`` elsewhere) and
    # a 20-million-row file (63 GB), on a filesystem every worker can read
    python examples/dask_inference.py --scheduler tcp://HOST:8786 --rows 20000000 \\
        --data /shared/big.npy --out /shared/labels.npy

The network is the pretrained 784-50-100-10 sigmoid network of "Deep Learning from
Scratch" ch. 3 and the rows are the MNIST test images, repeated, when ``$MINIFW_DATA_DIR``
(default ``../shared/data``) has them: the accuracy is then 0.9352 for any multiple of
10,000 rows. Without them, random weights and random rows (no accuracy).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

import minifw as mf

DEFAULT_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def read_rows(path: str, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` of a ``.npy`` file (runs on a worker; reads only those rows)."""
    return np.array(np.load(path, mmap_mode="r")[start:stop])


def write_rows(block: np.ndarray, path: str, block_info: Any = None) -> np.ndarray:
    """Write one chunk of labels into its rows of an existing ``.npy`` file (on a worker)."""
    start, stop = block_info[0]["array-location"][0]
    out = np.load(path, mmap_mode="r+")
    out[start:stop] = block
    out.flush()
    return np.zeros(1, np.int64) + (stop - start)  # rows written: summed, so nothing is lost


def lazy_rows(path: str, chunk_rows: int) -> Any:
    """The ``.npy`` file as a dask array of ``chunk_rows``-row chunks, read lazily."""
    import dask
    import dask.array as da

    mm = np.load(path, mmap_mode="r")  # header only: shape and dtype
    n, rest = mm.shape[0], mm.shape[1:]
    parts = [
        da.from_delayed(
            dask.delayed(read_rows)(path, s, min(s + chunk_rows, n)),
            shape=(min(s + chunk_rows, n) - s, *rest),
            dtype=mm.dtype,
        )
        for s in range(0, n, chunk_rows)
    ]
    return da.concatenate(parts, axis=0)


def write_npy(path: Path, shape: tuple[int, ...], dtype: Any, blocks: Any) -> None:
    """Write a ``.npy`` file block by block (never the whole array in memory), into a
    temporary file beside ``path`` renamed onto it when complete."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                      "fortran_order": False, "shape": shape}  # fmt: skip
            np.lib.format.write_array_header_2_0(f, header)
            for block in blocks:
                f.write(np.ascontiguousarray(block, dtype=dtype).tobytes())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def make_dataset(path: Path, rows: int, data: Path | None, block: int = 10_000) -> Path | None:
    """Write ``rows`` rows of 784 float32 pixels to ``path``; with MNIST in ``data``, the
    test images repeated, and their labels to ``<path>.labels.npy`` (returned, else
    ``None``); without it, uniform random pixels."""
    starts = range(0, rows, block)
    if data is None:
        rng = np.random.default_rng(0)
        gen = (rng.random((min(s + block, rows) - s, 784), dtype=np.float32) for s in starts)
        write_npy(path, (rows, 784), np.float32, gen)
        return None
    from minifw.datasets import load_mnist

    images, labels = load_mnist("test", data_dir=data / "mnist", download=False)
    idx = [np.arange(s, min(s + block, rows)) % len(images) for s in starts]
    write_npy(path, (rows, 784), np.float32, (images[i] for i in idx))
    label_path = path.with_suffix(".labels.npy")
    write_npy(label_path, (rows,), np.uint8, (labels[i] for i in idx))
    return label_path


def build_model(data_dir: Path | None) -> tuple[mf.Sequential, bool]:
    """The pretrained sample network if ``data_dir`` has it and MNIST, else a seeded random
    one of the same shape; and whether MNIST is there."""
    weights = data_dir / "weights" / "sample_weight.npz" if data_dir else None
    if data_dir and (data_dir / "mnist").is_dir() and weights and weights.exists():
        return mf.from_weights(weights, activation="sigmoid", output="softmax"), True
    mf.seed(0)
    model = mf.Sequential(
        mf.Dense(784, 50), mf.Sigmoid(), mf.Dense(50, 100), mf.Sigmoid(),
        mf.Dense(100, 10), mf.Softmax(),
    )  # fmt: skip
    return model, False


def run(
    *,
    scheduler: str | None = None,
    rows: int = 30_000,
    chunk_rows: int = 5_000,
    data_file: Path | None = None,
    out: Path | None = None,
    data_dir: Path | None = None,
    workers: int = 2,
) -> dict[str, Any]:
    """Classify every row of the dataset on the cluster; returns what was measured."""
    import dask
    from dask.distributed import Client, LocalCluster

    model, have_mnist = build_model(data_dir)
    tmp = None
    label_path: Path | None = None
    if data_file is None:
        tmp = tempfile.TemporaryDirectory(prefix="minifw-dask-")
        data_file = Path(tmp.name) / "rows.npy"
        label_path = make_dataset(data_file, rows, data_dir if have_mnist else None)
    elif data_file.with_suffix(".labels.npy").exists():
        label_path = data_file.with_suffix(".labels.npy")

    cluster = None
    if scheduler is None:
        cluster = LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
        )
    client = Client(cluster if cluster is not None else scheduler)
    try:
        x = lazy_rows(str(data_file), chunk_rows)
        t0 = time.perf_counter()
        probs = model.predict(x)  # lazy: (rows, 10), chunked like x
        pred = probs.argmax(axis=1).astype(np.uint8)
        result: dict[str, Any] = {
            "rows": int(x.shape[0]),
            "chunks": len(x.chunks[0]),
            "workers": len(client.scheduler_info()["workers"]),
            "scheduler": client.scheduler.address,
        }
        todo: dict[str, Any] = {}
        if label_path is not None:
            truth = lazy_rows(str(label_path), chunk_rows)
            todo["correct"] = (pred == truth).sum()
        tmp_out = None
        if out is not None:
            # the workers fill a temporary file beside ``out``; renamed only when complete
            fd, name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".npy")
            os.close(fd)
            os.chmod(name, 0o644)  # mkstemp makes it private; the result is an ordinary file
            tmp_out = Path(name)
            np.lib.format.open_memmap(tmp_out, mode="w+", dtype=np.uint8, shape=pred.shape)
            todo["written"] = pred.map_blocks(
                write_rows, str(tmp_out), chunks=((1,) * len(pred.chunks[0]),), dtype=np.int64
            ).sum()
        if not todo:
            todo["checksum"] = pred.astype(np.int64).sum()
        try:
            done = dict(zip(todo, dask.compute(*todo.values()), strict=True))  # on the client
        except BaseException:
            if tmp_out is not None:
                tmp_out.unlink(missing_ok=True)
            raise
        result["seconds"] = time.perf_counter() - t0
        result["rows_per_s"] = result["rows"] / result["seconds"]
        if "correct" in done:
            result["accuracy"] = int(done["correct"]) / result["rows"]
        if tmp_out is not None and out is not None:
            if int(done["written"]) != result["rows"]:
                tmp_out.unlink(missing_ok=True)
                raise RuntimeError(f"only {done['written']} of {result['rows']} rows written")
            os.replace(tmp_out, out)
            result["out"] = str(out)
        return result
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
        if tmp is not None:
            tmp.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--scheduler", help="address of a running dask scheduler (default: start a LocalCluster)"
    )
    parser.add_argument("--workers", type=int, default=2, help="LocalCluster worker processes")
    parser.add_argument("--rows", type=int, default=30_000, help="rows of the generated dataset")
    parser.add_argument("--chunk-rows", type=int, default=5_000, help="rows per chunk (task)")
    parser.add_argument("--data", type=Path, help="an existing (N, 784) .npy file to classify")
    parser.add_argument("--out", type=Path, help="write the predicted labels to this .npy file")
    parser.add_argument("--data-dir", type=Path, help="default: $MINIFW_DATA_DIR")
    args = parser.parse_args(argv)
    data_dir = args.data_dir or Path(os.environ.get("MINIFW_DATA_DIR") or DEFAULT_DATA)
    r = run(
        scheduler=args.scheduler,
        rows=args.rows,
        chunk_rows=args.chunk_rows,
        data_file=args.data,
        out=args.out,
        data_dir=data_dir if data_dir.is_dir() else None,
        workers=args.workers,
    )
    print(
        f"{r['rows']:,} rows in {r['chunks']} chunks on {r['workers']} workers "
        f"({r['scheduler']}): {r['seconds']:.2f} s, {r['rows_per_s']:,.0f} rows/s"
    )
    if "accuracy" in r:
        print(f"accuracy {r['accuracy']:.4f}")
    if "out" in r:
        print(f"labels written to {r['out']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
