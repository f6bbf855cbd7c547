"""MNIST-style IDX files: parsing one file (raw or gzip) and reading a folder of train-/t10k- image and
label files into train and test splits.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from cnnlab.data.readers.arrays import array_split, labels_to_index
from cnnlab.data.readers.base import DataSource, ReadRequest, register_reader
from cnnlab.errors import CnnlabError

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """Parse one IDX file (gzip or raw): magic 0x0000TTDD, then DD big-endian int32 dims, then the data."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError; a damaged stream, zlib.error
        raise CnnlabError(f"cannot read IDX file {path}: {e}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES or not 1 <= data[3] <= 4:
        raise CnnlabError(f"{path} is not an IDX file (bad magic number)")
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise CnnlabError(f"{path} is truncated (header)")
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = math.prod(dims) * dtype.itemsize  # exact (Python ints): absurd dims cannot wrap around
    body = data[4 + 4 * ndim :]
    if len(body) != expected or math.prod(d for d in dims if d) * dtype.itemsize >= 2**40:
        raise CnnlabError(f"{path} holds {len(body)} data bytes but its header {dims} needs {expected}")
    return np.frombuffer(body, dtype=dtype).reshape(dims)


def _find_idx(root: Path, prefix: str, kind: str) -> Path | None:
    for name in (f"{prefix}-{kind}-idx{3 if kind == 'images' else 1}-ubyte", f"{prefix}-{kind}.idx"
                 f"{3 if kind == 'images' else 1}-ubyte"):
        for suffix in ("", ".gz"):
            if (root / (name + suffix)).is_file():
                return root / (name + suffix)
    return None


def is_idx_folder(root: Path) -> bool:
    return _find_idx(root, "train", "images") is not None


def read_idx_folder(root: Path) -> DataSource:
    splits = {}
    for prefix, split in (("train", "train"), ("t10k", "test")):
        images, labels = _find_idx(root, prefix, "images"), _find_idx(root, prefix, "labels")
        if images is None:
            continue
        if labels is None:
            raise CnnlabError(f"{root} has {images.name} but no {prefix}-labels-idx1-ubyte(.gz)")
        x, y = read_idx(images), read_idx(labels)
        if x.ndim != 3 or y.ndim != 1:
            raise CnnlabError(f"{images.name}/{labels.name}: expected images (N,H,W) and labels (N,), "
                              f"got {x.shape} and {y.shape}")
        splits[split] = array_split(x, y, str(images), f"{prefix}/")
    return DataSource(root.name, "idx", labels_to_index(splits, None, str(root)), splits)


@register_reader("idx", order=20, accepts=lambda req: req.path.is_dir() and is_idx_folder(req.path))
def _read_idx_request(req: ReadRequest) -> DataSource:
    """A folder of MNIST IDX files: train-images-idx3-ubyte(.gz), train-labels-..., t10k-...."""
    return read_idx_folder(req.path)
