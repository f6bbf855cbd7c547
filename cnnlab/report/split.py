"""The split a report is about, read a chunk at a time so that no split is ever held whole at full size.

`open_split(run, data, split)` picks the split as `cnnlab evaluate` does (auto: the test split if the data has one,
else the run's held-out val split, recreated with the run's seed) and returns a `SplitView`:

- `view.batches(n)` yields uint8 (B, C, H, W) chunks of at most n images, in order, at the model's input size;
  after the pass `view.ids`, `view.labels` (the run's class indices) and `view.skipped` describe the rows;
- `view.take(rows)` gives those rows again (to draw thumbnails and Grad-CAM of the few that are shown).

Array sources (npz, IDX, builtins) convert a chunk at a time; files are read from the decoded-image cache through a
memory map when the run (or an earlier report) left the split there, and decoded a chunk at a time otherwise.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from cnnlab.data.cache import cached_array_path, load_meta, split_key
from cnnlab.data.dataset import ImageGeometry, decode_or_reason, decode_split
from cnnlab.data.readers import DataSource, Split
from cnnlab.errors import CnnlabError
from cnnlab.inference import Run, label_map, open_source


class SplitView:
    """One split of a source at the run's geometry, read in chunks (see the module doc)."""

    def __init__(self, src: DataSource, name: str, geom: ImageGeometry, resize: str, labels_to_run: np.ndarray,
                 use_cache: bool = True, workers: int = 2) -> None:
        self.source, self.name, self.geom, self.resize = src, name, geom, resize
        self.split: Split = src.splits[name]
        self.to_run, self.workers = labels_to_run, workers
        self.skipped: list[tuple[str, str]] = []
        self.memmap: np.ndarray | None = None
        self.rows: np.ndarray = np.arange(len(self.split))  # view row -> position in the split
        key = split_key(src, self.split, geom, resize) if use_cache else None
        meta = load_meta(key) if key is not None else None
        if meta is not None:  # decoded before, by the run or a report: a memory map of it, nothing decoded
            self.memmap = np.load(cached_array_path(key), mmap_mode="r")[: meta["n"]]
            self.ids, self.labels = list(meta["ids"]), self.to_run[np.asarray(meta["labels"], dtype=np.int64)]
            self.skipped = [tuple(s) for s in meta["skipped"]]
        else:
            self.ids = list(self.split.ids)
            self.labels = self.to_run[self.split.labels]
        self.kind = "memmap" if self.memmap is not None else ("array" if self.split.array is not None else "files")

    def __len__(self) -> int:
        return len(self.ids)

    def batches(self, size: int) -> Iterator[torch.Tensor]:
        """uint8 (B, C, H, W) chunks of at most `size` rows, in order; unreadable files are dropped and listed."""
        if self.kind != "files":
            for lo in range(0, len(self), size):
                yield self._read(np.arange(lo, min(lo + size, len(self))))
            return
        kept: list[int] = []
        for lo in range(0, len(self.split), size):
            positions = np.arange(lo, min(lo + size, len(self.split)))
            arrays, good = self._decode(positions)
            kept += good
            if arrays:
                yield torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
        if not kept:
            raise CnnlabError(f"no image of the {self.name} split of {self.source.name} could be decoded "
                              f"({self.skipped[0][1] if self.skipped else 'empty'})")
        self.rows = np.asarray(kept, dtype=np.int64)
        self.ids = [self.split.ids[i] for i in kept]
        self.labels = self.to_run[self.split.labels[self.rows]]

    def _decode(self, positions: np.ndarray) -> tuple[list[np.ndarray], list[int]]:
        jobs = [(self.source.container, self.split.refs[i], self.geom, self.resize) for i in positions]
        with ThreadPoolExecutor(max_workers=self.workers) as pool:  # PIL decodes release the GIL
            results = list(pool.map(decode_or_reason, jobs))
        arrays, good = [], []
        for i, r in zip(positions, results):
            if isinstance(r, str):
                self.skipped.append((self.split.ids[i], r))
            else:
                arrays.append(r)
                good.append(int(i))
        return arrays, good

    def take(self, rows: np.ndarray) -> torch.Tensor:
        """The images of view rows `rows` as uint8 (B, C, H, W) (read again: the split is never held whole)."""
        return self._read(np.asarray(rows, dtype=np.int64))

    def _read(self, rows: np.ndarray) -> torch.Tensor:
        if self.memmap is not None:
            return torch.from_numpy(np.ascontiguousarray(self.memmap[rows]))
        positions = self.rows[rows]
        if self.kind == "array":
            return decode_split(self.source, self.split.subset(positions), self.geom, self.resize).x
        arrays, good = self._decode(positions)
        if len(good) != len(positions):
            raise CnnlabError(f"{self.source.name}: files of the {self.name} split changed while the report was "
                              "written; run cnnlab report again")
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def open_split(run: Run, data: str | None = None, split: str = "auto") -> SplitView:
    """The split of `data` (default: the run's own data) that the report shows, as a SplitView."""
    src, name, _ = open_source(run, data, split)
    d = run.config.data
    return SplitView(src, name, run.geometry, d.resize, label_map(src.class_names, run.class_names, src.name),
                     use_cache=d.cache, workers=max(1, min(4, d.workers)))
