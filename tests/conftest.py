"""Shared fixtures: the real-dataset location and tiny generated datasets in tmp_path."""

from __future__ import annotations

import gzip
import os
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("CNNLAB_DATASETS", REPO.parent / "shared" / "datasets"))


def dataset_path(*parts: str) -> Path:
    """A path under the real datasets; skips the test when it is not there."""
    path = DATASETS.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real dataset not found: {path} (set CNNLAB_DATASETS)")
    return path


def pattern_image(label: int, index: int, size: int = 12, mode: str = "RGB") -> Image.Image:
    """A learnable synthetic image: the class decides which quadrant is bright."""
    rng = np.random.default_rng(label * 1000 + index)
    arr = rng.integers(0, 60, size=(size, size, 3), dtype=np.uint8)
    half = size // 2
    r, c = divmod(label % 4, 2)
    arr[r * half : (r + 1) * half, c * half : (c + 1) * half] += 180
    return Image.fromarray(arr, "RGB").convert(mode)


def make_image_folder(root: Path, classes=("cat", "dog"), per_class: int = 10, size: int = 12, ext: str = ".png",
                      splits: tuple[str, ...] | None = None) -> Path:
    for split in splits or ("",):
        for label, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pattern_image(label, i + hash(split) % 100, size).save(folder / f"{name}_{i}{ext}")
    return root


def zip_folder(folder: Path, out: Path, prefix: str = "") -> Path:
    with zipfile.ZipFile(out, "w") as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                zf.write(p, prefix + p.relative_to(folder).as_posix())
    return out


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> None:
    code = {np.dtype(np.uint8): 0x08}[array.dtype]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.tobytes()
    if compress:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run `python -m cnnlab ARGS` with this checkout's package first on the path."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "cnnlab", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=timeout)


@pytest.fixture(scope="session", autouse=True)
def _private_cache_dir(tmp_path_factory):
    """Decoded-image and feature caches go to a temporary folder, never to the user's ~/.cache."""
    if "CNNLAB_CACHE_DIR" not in os.environ:
        os.environ["CNNLAB_CACHE_DIR"] = str(tmp_path_factory.mktemp("cnnlab-cache"))
        yield
        del os.environ["CNNLAB_CACHE_DIR"]
    else:
        yield


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module: tiny tensors run fastest so, and nothing spins on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "pets", classes=("cat", "dog", "fox"), per_class=12)
