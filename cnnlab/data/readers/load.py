"""load_source: DATA -> DataSource through the first registered reader that accepts it, then the held-out
validation split when the data has none. Also the stratified split and the one-line summary of skipped files.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from cnnlab.data.readers.base import DataSource, ReadRequest, find_reader
from cnnlab.data.readers.builtin import BUILTINS
from cnnlab.errors import CnnlabError


def read_source(request: ReadRequest) -> DataSource:
    """The DataSource of the first reader (in registry order) that accepts the request, as the data has it."""
    reader = find_reader(request)
    if reader is not None:
        return reader.read(request)
    if not request.path.exists():
        raise CnnlabError(f"no such file or folder: {request.source} (builtin datasets: {', '.join(BUILTINS)})")
    raise CnnlabError(f"cannot read {request.source}: expected a folder, .zip, .csv, .npz or a builtin name "
                      f"({', '.join(BUILTINS)})")


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val) with `fraction` of each class in val (at least one per class with >= 2 samples)."""
    rng = np.random.default_rng(seed)
    train_idx, val_idx = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        n_val = int(round(len(idx) * fraction))
        if len(idx) >= 2:
            n_val = min(max(n_val, 1), len(idx) - 1)
        else:
            n_val = 0
        val_idx.append(idx[:n_val])
        train_idx.append(idx[n_val:])
    return np.sort(np.concatenate(train_idx)), np.sort(np.concatenate(val_idx))


def load_source(source: str, *, val_split: float = 0.2, seed: int = 0, images: str | None = None,
                id_col: str | None = None, label_col: str | None = None, skip_missing: bool = False) -> DataSource:
    """Read DATA into a DataSource with train and (when possible) val splits.

    Without a val split in the data, a stratified `val_split` fraction of train is held out (seeded).
    """
    request = ReadRequest(source, Path(source).expanduser(), images, id_col, label_col, skip_missing)
    src = read_source(request)
    if not 0 <= val_split < 1:
        raise CnnlabError(f"--val-split must be in [0, 1), got {val_split}")
    train = src.splits["train"]
    if len(train) == 0:
        raise CnnlabError(f"{source}: the train split is empty")
    present = np.unique(train.labels)
    if len(present) < 2:
        raise CnnlabError(f"{source}: only one class in the training data; a classifier needs at least two")
    if "val" not in src.splits and val_split > 0:
        tr, va = stratified_split(train.labels, val_split, seed)
        src.splits["train"], src.splits["val"] = train.subset(tr), train.subset(va)
        src.val_held_out = True
    return src


def skipped_summary(skipped: list[tuple[str, str]]) -> str:
    """"3 hidden or system file, 1 unreadable image (...)": counts per reason, most common first."""
    reasons = Counter(r for _, r in skipped)
    return ", ".join(f"{n} {r}" for r, n in reasons.most_common())
