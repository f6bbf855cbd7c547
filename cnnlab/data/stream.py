"""The streaming path, for data over the memory budget: a torch DataLoader (workers, pinned memory, prefetch).

`StreamBatches` offers the interface of `TensorBatches` (`__len__`, `batches(epoch, start_step)`) and the same
order: batch k of epoch e holds the same samples either way (epoch_permutation(n, seed, epoch)), so a run gives
the same results whether its data fit in memory or not. Rows come from the decoded-image cache's memory-mapped
.npy when there is one, else each item is decoded on the fly by decode_image.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from cnnlab.data.dataset import DecodedSplit, ImageGeometry, decode_image, decode_or_reason
from cnnlab.data.loader import TensorBatches
from cnnlab.data.readers import DataSource, Split
from cnnlab.errors import CnnlabError

if TYPE_CHECKING:
    from cnnlab.data.samplers import Sampler as BalanceSampler


class DecodeDataset(Dataset):
    """(uint8 (C, H, W), label) per item, decoded from the source's container on every access."""

    def __init__(self, container, refs: list[str], labels: np.ndarray, geom: ImageGeometry, policy: str):
        self.container, self.refs, self.labels = container, refs, labels
        self.geom, self.policy = geom, policy

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        arr = decode_image(self.container.read(self.refs[i]), self.geom.channels, self.geom.size[0], self.policy)
        return torch.from_numpy(np.require(arr, requirements="W")).permute(2, 0, 1).contiguous(), int(self.labels[i])


class MemmapDataset(Dataset):
    """Rows of a cached (N, C, H, W) uint8 .npy, memory-mapped lazily in each worker process."""

    def __init__(self, path: Path, n: int, labels: np.ndarray):
        self.path, self.n, self.labels = Path(path), n, labels
        self._x: np.ndarray | None = None

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if self._x is None:
            self._x = np.load(self.path, mmap_mode="r")
        return torch.from_numpy(np.array(self._x[i])), int(self.labels[i])

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_x": None}


@dataclass
class StreamedSplit:
    """A split that is not held in memory: a Dataset plus its labels, ids and skipped files."""

    dataset: Dataset
    y: torch.Tensor  # (N,) int64
    ids: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.y)

    def images(self, index: torch.Tensor) -> torch.Tensor:
        """uint8 (K, C, H, W) of the given rows (for statistics and previews)."""
        return torch.stack([self.dataset[int(i)][0] for i in index])


def validate_split(src: DataSource, split: Split, geom: ImageGeometry, policy: str,
                   workers: int = 4) -> tuple[list[int], list[tuple[str, str]]]:
    """Decode every file once without keeping it: the indices that decode, and the skipped (id, reason)."""
    keep, skipped = [], []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for lo in range(0, len(split), 512):
            jobs = [(src.container, ref, geom, policy) for ref in split.refs[lo : lo + 512]]
            for i, result in enumerate(pool.map(decode_or_reason, jobs), start=lo):
                if isinstance(result, str):
                    skipped.append((split.ids[i], result))
                else:
                    keep.append(i)
    return keep, skipped


def stream_split(src: DataSource, split: Split, geom: ImageGeometry, policy: str,
                 use_cache: bool) -> StreamedSplit | DecodedSplit:
    """A split for the streaming path: memory-mapped from the decoded cache, else decoded per item."""
    from cnnlab.data import cache

    if split.array is not None:  # arrays already in memory (npz / IDX): nothing to stream from
        from cnnlab.data.dataset import decode_split

        return decode_split(src, split, geom, policy)
    key = cache.split_key(src, split, geom, policy) if use_cache else None
    if key is not None:
        meta = cache.decode_split_to_file(src, split, geom, policy, key)
        if meta["n"] == 0:
            raise CnnlabError(f"no image of {src.name} could be decoded ({_first_reason(meta['skipped'])})")
        labels = np.array(meta["labels"], dtype=np.int64)
        return StreamedSplit(MemmapDataset(cache.cached_array_path(key), meta["n"], labels),
                             torch.from_numpy(labels), meta["ids"], [tuple(s) for s in meta["skipped"]])
    keep, skipped = validate_split(src, split, geom, policy)
    if not keep:
        raise CnnlabError(f"no image of {src.name} could be decoded ({_first_reason(skipped)})")
    labels = split.labels[keep]
    dataset = DecodeDataset(src.container, [split.refs[i] for i in keep], labels, geom, policy)
    return StreamedSplit(dataset, torch.from_numpy(labels), [split.ids[i] for i in keep], skipped)


def _first_reason(skipped) -> str:
    return skipped[0][1] if skipped else "empty"


class _EpochBatchSampler(Sampler):
    """Index lists of one epoch from `start_step` on; set_epoch before each iteration."""

    def __init__(self, owner: StreamBatches):
        self.owner = owner
        self.epoch, self.start_step = 0, 0

    def __len__(self) -> int:
        return len(self.owner) - self.start_step

    def __iter__(self) -> Iterator[list[int]]:
        o = self.owner
        order = o.epoch_order(self.epoch)
        for step in range(self.start_step, len(o)):
            yield o.step_indices(order, step)


class StreamBatches(TensorBatches):
    """Mini-batches streamed from a Dataset by a DataLoader, moved to `device`; same order as TensorBatches.
    `targets`: what a batch of labels becomes (a task's targets; default the labels)."""

    def __init__(self, dataset: Dataset, y: torch.Tensor, batch_size: int | str, shuffle: bool, seed: int = 0,
                 device: torch.device | None = None, workers: int = 2, prefetch: int = 4,
                 sampler: BalanceSampler | None = None, shard: tuple[int, int] | None = None,
                 targets: Callable[[torch.Tensor], Any] | None = None):
        super().__init__(None, y, batch_size, shuffle, seed, sampler=sampler, shard=shard)
        self.dataset, self.device = dataset, device or torch.device("cpu")
        self.targets = targets
        self.batch_sampler = _EpochBatchSampler(self)
        pin = self.device.type == "cuda"
        extra = {"persistent_workers": True, "prefetch_factor": prefetch} if workers > 0 else {}
        self.loader = DataLoader(dataset, batch_sampler=self.batch_sampler, num_workers=workers, pin_memory=pin,
                                 **extra)

    def batches(self, epoch: int = 0, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.batch_sampler.epoch, self.batch_sampler.start_step = epoch, start_step
        for xb, yb in self.loader:
            yb = yb if self.targets is None else self.targets(yb)
            yield xb.to(self.device, non_blocking=True), yb.to(self.device, non_blocking=True)


def make_batches(split: DecodedSplit | StreamedSplit, batch_size: int | str, shuffle: bool, seed: int,
                 device: torch.device, workers: int = 2, sampler: BalanceSampler | None = None,
                 shard: tuple[int, int] | None = None,
                 targets: Callable[[torch.Tensor], Any] | None = None) -> TensorBatches:
    """TensorBatches on `device` for a split in memory, StreamBatches for a streamed one; `shard` (rank, world):
    this rank's part of every global batch; `targets`: labels -> a task's targets (a tensor; default the labels)."""
    if isinstance(split, StreamedSplit):
        return StreamBatches(split.dataset, split.y, batch_size, shuffle, seed, device, workers, sampler=sampler,
                             shard=shard, targets=targets)
    y = split.y if targets is None else targets(split.y)
    return TensorBatches(split.x.to(device), y.to(device), batch_size, shuffle, seed, sampler=sampler, shard=shard)


def sample_images(split: DecodedSplit | StreamedSplit, index: torch.Tensor) -> torch.Tensor:
    """uint8 (K, C, H, W) images at `index` of either kind of split."""
    if isinstance(split, StreamedSplit):
        return split.images(index)
    return split.x.index_select(0, index)
