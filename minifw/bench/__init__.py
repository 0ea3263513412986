"""``minifw bench``: minifw beside its peers, inference and training, in one process.

Inference of two float32 MLPs with random weights and inputs (no downloads):

* **S** 784-50-100-10, sigmoid, softmax (the reference network), batches 1, 100, 10000;
* **W** 784-1024-1024-10, ReLU, softmax, batches 1, 256, 8192;

on minifw (``model(x)`` and ``model.predict(x)`` on NumPy, ``predict`` on every other
available backend, and ``model(x)`` on a tensor / array of its own on torch and jax), the
hand-written NumPy function of the book ("Deep Learning from Scratch"), "torch eager" (``torch.nn`` modules
under ``torch.inference_mode()``, CPU), "jax.jit" (a ``jax.jit``-compiled forward), ONNX
Runtime (CPU provider, the same graph built with the ``onnx`` helper API) and the bare GEMM
floor (only the three matmuls, into preallocated outputs). minifw on torch and jax is also
set against that engine's own fastest form ("each engine at its own speed": paired ratios
``minifw torch model(x) / torch eager`` and ``minifw jax model(x) / jax.jit``).
"PyTorch-trained model served by minifw" (``imported``): a PyTorch MLP exported with
``torch.onnx.export`` and imported with ``mf.load``, at batches 1, 64 and 10,000, minifw on
NumPy against ONNX Runtime and the PyTorch original, with each one's installed size.
Training: one Fashion-MNIST epoch of 784-256-128-10 (batch 128, Adam) against PyTorch CPU,
from ``benchmarks/train_epoch.py`` when it is there.

CNN cases (``--networks C1,C2``; ``convnets``): the book's SimpleConvNet (C1) and DeepConvNet
(C2) with random weights on (N, 1, 28, 28) inputs, batches 1, 100, 10000, minifw (NumPy)
against PyTorch eager and ONNX Runtime; with them, one training epoch of a conv-BN-ReLU-pool
CNN on Fashion-MNIST (batch 100, Adam) against PyTorch.

Method: for each configuration every engine is warmed up, then timed in interleaved
rounds (engine A, B, C, ... then again, the order rotated each round). Before each timed
loop the command waits until the previous engine's worker threads have stopped spinning
(at most ``--settle-seconds``) and makes one untimed call; the loop then lasts about
``--loop-seconds`` (at least 3 calls; 1 with ``--quick``). A loop during which other
processes used more than ``--max-foreign`` of the machine's CPU (from ``/proc/stat`` minus
this process) is thrown away and redone after a pause. Reported: median, min and max time
per call, samples/s, ratios of minifw to each peer, peak memory per call (RSS high-water
mark and traced allocations), and the machine (CPU, cores, BLAS and its threads). Results
go to ``--out`` as JSON, a markdown table and a PNG chart.

Peers that are not installed are skipped with a note; ``pip install "minifw[bench]"``
installs them.

Layout: ``machine`` (machine facts, ``/proc/stat`` busy time), ``nets`` (the S/W networks and
the minifw model), ``peers`` (hand-written NumPy, GEMM floor, PyTorch, ONNX Runtime and the
ONNX graph), ``convnets`` (the CNN cases: networks, peers, training epoch), ``engines`` (what is timed per configuration), ``imported`` (the PyTorch-trained model case), ``timing`` (the measuring loop,
paired ratios, memory), ``runner`` (inference and training runs), ``report`` (markdown and
chart), ``cli`` (options, ``main``). Nothing in the core library imports this package.
"""

from __future__ import annotations

from .cli import PROG, main, parser
from .engines import build_engines, build_gpu_engines
from .machine import machine_info
from .nets import GPU_BATCHES, MINIFW_REF, MINIFW_REF_GPU, NETWORKS, SMOKE_BATCHES, Net
from .peers import gemm_floor, hand_written, onnx_model_bytes, torch_sequential
from .report import chart, markdown
from .timing import Engine, Timer, paired_ratio

__all__ = [
    "GPU_BATCHES",
    "MINIFW_REF",
    "MINIFW_REF_GPU",
    "NETWORKS",
    "PROG",
    "SMOKE_BATCHES",
    "Engine",
    "Net",
    "Timer",
    "build_engines",
    "build_gpu_engines",
    "chart",
    "gemm_floor",
    "hand_written",
    "machine_info",
    "main",
    "markdown",
    "onnx_model_bytes",
    "paired_ratio",
    "parser",
    "torch_sequential",
]
