"""Arrays already in memory: checking and converting image arrays to (N, H, W, C) uint8, integer labels to
class indices, and the readers of one .npz file and of a folder of train/val/test .npz files. The IDX and
builtin readers build their splits with `array_split` and `labels_to_index` too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cnnlab.data.readers.base import DataSource, ReadRequest, Split, register_reader
from cnnlab.errors import CnnlabError

MAX_CLASSES = 100_000  # integer labels above this are a broken file, not class indices (and would cost GBs)


def check_images_array(x: np.ndarray, where: str) -> np.ndarray:
    """Any (N,H,W) or (N,H,W,C) array of numbers -> contiguous, writeable (N,H,W,1|3) uint8; floats <= 1 scaled."""
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3, 4) or min(x.shape[1:3]) < 1:
        raise CnnlabError(f"{where}: images must have shape (N,H,W) or (N,H,W,C) with C in 1, 3, 4; "
                          f"got {x.shape}")
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating) or x.dtype == bool):
        raise CnnlabError(f"{where}: images must be numbers (uint8 0..255 or floats), got dtype {x.dtype}")
    if x.dtype != np.uint8:
        if np.issubdtype(x.dtype, np.floating) and x.size and float(np.nanmax(x)) <= 1.0:
            x = np.clip(np.nan_to_num(x) * 255.0 + 0.5, 0, 255)
        x = np.clip(x, 0, 255).astype(np.uint8)
    if x.shape[-1] == 4:
        x = x[..., :3]
    x = np.ascontiguousarray(x)
    return x if x.flags.writeable else x.copy()  # IDX arrays are views of read-only bytes


def array_split(x: np.ndarray, y: np.ndarray, where: str, prefix: str = "") -> Split:
    """A Split of in-memory images; ids are `prefix` + the row index."""
    x = check_images_array(x, where)
    y = np.asarray(y).reshape(-1)
    if len(x) != len(y):
        raise CnnlabError(f"{where}: {len(x)} images but {len(y)} labels")
    whole = y.dtype.kind in "iub" or (y.dtype.kind == "f" and bool(np.all(np.isfinite(y) & (y == np.round(y)))))
    if not whole:
        raise CnnlabError(f"{where}: labels must be whole numbers 0..K-1 (with class_names for their names), got "
                          f"dtype {y.dtype}")
    return Split(y.astype(np.int64), [f"{prefix}{i}" for i in range(len(y))], array=x)


def labels_to_index(splits: dict[str, Split], names: list[str] | None, where: str) -> list[str]:
    """Class names for integer labels: `names` when given (checked against the labels), else "0".."K-1"."""
    values = np.unique(np.concatenate([s.labels for s in splits.values()]))
    if values.size == 0:
        raise CnnlabError(f"{where} holds no images")
    if names is None:
        if values.min() < 0 or values.max() >= MAX_CLASSES:
            raise CnnlabError(f"{where}: labels must be class indices 0..K-1 (K up to {MAX_CLASSES:,}) or come "
                              f"with class_names; found values from {values.min()} to {values.max()}")
        names = [str(i) for i in range(int(values.max()) + 1)]
    elif values.max() >= len(names) or values.min() < 0:
        raise CnnlabError(f"{where}: labels go up to {values.max()} but there are {len(names)} class_names")
    return names


def read_npz(path: Path) -> DataSource:
    try:
        with np.load(path, allow_pickle=False) as f:
            data = {k: f[k] for k in f.files}
    except Exception as e:  # noqa: BLE001  (a damaged file fails in many ways: EOFError, zlib.error, BadZipFile...)
        raise CnnlabError(f"cannot read {path} as a .npz of arrays ({type(e).__name__}: {e})") from None
    names = [str(n) for n in np.asarray(data["class_names"]).reshape(-1)] if "class_names" in data else None
    splits = {}
    if "x" in data and "y" in data:
        splits["train"] = array_split(data["x"], data["y"], str(path))
    for split in ("train", "val", "test"):
        if f"x_{split}" in data and f"y_{split}" in data:
            splits[split] = array_split(data[f"x_{split}"], data[f"y_{split}"], str(path), f"{split}/")
    if "train" not in splits:
        raise CnnlabError(f"{path} needs arrays 'x' and 'y' (or x_train/y_train); it has {', '.join(data)}")
    names = labels_to_index(splits, names, str(path))
    return DataSource(path.stem, "npz", names, splits)


def read_npz_folder(root: Path) -> DataSource:
    splits, names = {}, None
    for split in ("train", "val", "test"):
        p = root / f"{split}.npz"
        if p.exists():
            src = read_npz(p)
            splits[split] = src.splits["train"]
            with np.load(p, allow_pickle=False) as f:  # names the file holds, not the 0..K-1 read_npz made up
                names = names or (src.class_names if "class_names" in f.files else None)
    if "train" not in splits:
        raise CnnlabError(f"{root} has .npz files but no train.npz")
    return DataSource(root.name, "npz", labels_to_index(splits, names, str(root)), splits)


@register_reader("npz_folder", order=30, accepts=lambda req: req.path.is_dir() and (req.path / "train.npz").is_file())
def _read_npz_folder_request(req: ReadRequest) -> DataSource:
    """A folder holding train.npz (and optionally val.npz, test.npz)."""
    return read_npz_folder(req.path)


@register_reader("npz", order=70, accepts=lambda req: req.is_file_with(".npz"))
def _read_npz_request(req: ReadRequest) -> DataSource:
    """A .npz with x and y (or x_train, y_train, x_val, ...) and optional class_names."""
    return read_npz(req.path)
