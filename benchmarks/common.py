"""Shared helpers for cnnlab's benchmarks: dataset readers, hardware facts, statistics and result files.

Kept free of cnnlab imports so the peers (plain PyTorch, Keras) stay independent of the code under test.
Datasets are read from ``$CNNLAB_DATASETS`` (default: ``<repo root>/../shared/datasets``); nothing is copied.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import platform
import statistics
import struct
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"

# Per-channel statistics of the *training* pixels in [0, 1], used identically by every peer.
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


@dataclass
class Split:
    """Images as float32 NHWC (already normalised) and int64 labels."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class Dataset:
    """A train/test pair plus its name; every peer trains on ``train`` and reports accuracy on ``test``."""

    name: str
    train: Split
    test: Split
    num_classes: int = 10


def datasets_root() -> Path:
    """Where the real datasets live: ``$CNNLAB_DATASETS`` or ``<repo>/../shared/datasets``."""
    env = os.environ.get("CNNLAB_DATASETS")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "datasets"


def _read_idx(path: Path) -> np.ndarray:
    """Read one (gzip-compressed) IDX file into a numpy array of its declared shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _normalise(x_uint8: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """uint8 NHWC -> float32 NHWC, scaled to [0, 1] then standardised per channel."""
    x = x_uint8.astype(np.float32) / 255.0
    return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def load_mnist(root: Path | None = None) -> Dataset:
    """Full MNIST (60k/10k) from the original IDX ``.gz`` files, as normalised float32 (N, 28, 28, 1)."""
    d = (root or datasets_root()) / "mnist"
    parts = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        x = _read_idx(d / f"{prefix}-images-idx3-ubyte.gz")[..., None]
        y = _read_idx(d / f"{prefix}-labels-idx1-ubyte.gz").astype(np.int64)
        parts[split] = Split(_normalise(x, MNIST_MEAN, MNIST_STD), y)
    return Dataset("mnist", parts["train"], parts["test"])


def load_cifar10(root: Path | None = None) -> Dataset:
    """The cifar10 npz subset (10k train / 2k test, JPEG re-encoded), as normalised float32 (N, 32, 32, 3)."""
    d = (root or datasets_root()) / "cifar10"
    parts = {}
    for split in ("train", "test"):
        with np.load(d / f"{split}.npz") as z:
            parts[split] = Split(_normalise(z["x"], CIFAR_MEAN, CIFAR_STD), z["y"].astype(np.int64))
    return Dataset("cifar10", parts["train"], parts["test"])


def load_dataset(name: str) -> Dataset:
    """Load a benchmark dataset by name (``mnist`` or ``cifar10``)."""
    loaders = {"mnist": load_mnist, "cifar10": load_cifar10}
    if name not in loaders:
        raise ValueError(f"unknown dataset {name!r}; choose from {sorted(loaders)}")
    return loaders[name]()


def random_crop_flip(x: np.ndarray, rng: np.random.Generator, pad: int = 4) -> np.ndarray:
    """Standard CIFAR augmentation on a whole NHWC array: zero-pad, random crop back, random h-flip.

    Done in numpy once per epoch so every peer sees the same kind of augmentation at the same cost.
    """
    n, h, w, _ = x.shape
    padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    dy = rng.integers(0, 2 * pad + 1, n)
    dx = rng.integers(0, 2 * pad + 1, n)
    rows = dy[:, None] + np.arange(h)[None, :]
    cols = dx[:, None] + np.arange(w)[None, :]
    out = padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]
    flip = rng.random(n) < 0.5
    out[flip] = out[flip, :, ::-1]
    return out


def cpu_flags() -> set[str]:
    """The CPU feature flags from /proc/cpuinfo (empty where that file does not exist)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, or platform.processor() elsewhere."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def has_native_bf16() -> bool:
    """True where the CPU has native bf16 arithmetic (AMX-BF16 or AVX512-BF16)."""
    return bool({"amx_bf16", "avx512_bf16"} & cpu_flags())


def _module_version(name: str) -> str | None:
    """A package's version without importing it (importing TensorFlow costs seconds and threads)."""
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def hardware_info() -> dict[str, Any]:
    """Hardware and software facts recorded with every result file."""
    flags = cpu_flags()
    mem_gb = None
    with contextlib.suppress(ValueError, OSError, AttributeError):
        mem_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    return {
        "cpu_model": cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_flags": sorted(flags & {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "amx_int8"}),
        "native_bf16": has_native_bf16(),
        "memory_gb": mem_gb,
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "versions": {
            pkg: _module_version(pkg)
            for pkg in ("torch", "torchvision", "timm", "numpy", "tensorflow", "keras", "fastai")
        },
    }


def median(values: Sequence[float]) -> float | None:
    """Median of the non-missing values, or None when there are none."""
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def time_to_target(
    epoch_times: Sequence[float], accuracies: Sequence[float], target: float
) -> tuple[float | None, int | None]:
    """Cumulative training seconds and epoch count at which test accuracy first reaches ``target``."""
    total = 0.0
    for epoch, (t, acc) in enumerate(zip(epoch_times, accuracies), start=1):
        total += t
        if acc >= target:
            return total, epoch
    return None, None


def write_results(
    name: str, payload: dict[str, Any], markdown: str, out_dir: Path | None = None
) -> tuple[Path, Path]:
    """Write ``<name>.json`` and ``<name>.md`` under ``benchmarks/results`` (or ``out_dir``)."""
    out = out_dir or RESULTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / f"{name}.json", out / f"{name}.md"
    json_path.write_text(json.dumps(payload, indent=1, default=str) + "\n")
    md_path.write_text(markdown)
    return json_path, md_path
