"""Batches from decoded tensors: shuffled per epoch from (seed, epoch), so any step of any epoch can be
recomputed exactly (resume), with no per-image Python work in the epoch loop.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch

from cnnlab.errors import CnnlabError

if TYPE_CHECKING:
    from cnnlab.data.samplers import Sampler


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffled order of epoch `epoch`: a pure function of (seed, epoch)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


class TensorBatches:
    """Mini-batches of uint8 images (N, C, H, W) and labels held in memory (on the training device).

    `sampler` (cnnlab.data.balance: oversampling, undersampling) replaces the shuffled permutation with its own
    index order per epoch, also a pure function of (seed, epoch); its length is the epoch's length.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int | str, shuffle: bool, seed: int = 0,
                 sampler: Sampler | None = None):
        self.x, self.y = x, y
        self.sampler = sampler
        n = len(sampler) if sampler is not None else len(y)
        if batch_size == "full":
            batch_size = n
        if isinstance(batch_size, str) or batch_size < 1:
            raise CnnlabError(f"batch size must be a positive number or 'full', got {batch_size!r}")
        self.batch_size = min(int(batch_size), n)
        self.shuffle, self.seed = shuffle, seed
        # A final batch of one sample breaks batch norm in training; it joins the next epoch's shuffle instead.
        self.drop_single = (shuffle or sampler is not None) and n % self.batch_size == 1 and n > 1

    def _epoch_size(self) -> int:
        return len(self.sampler) if self.sampler is not None else len(self.y)

    def __len__(self) -> int:
        n = self._epoch_size() - (1 if self.drop_single else 0)
        return (n + self.batch_size - 1) // self.batch_size

    def epoch_order(self, epoch: int) -> torch.Tensor | None:
        """Indices of epoch `epoch` in batch order (None: stored order); a pure function of (seed, epoch)."""
        order = None
        if self.sampler is not None:
            order = self.sampler.order(self.seed, epoch)
        elif self.shuffle:
            order = epoch_permutation(len(self.y), self.seed, epoch)
        if order is not None and self.drop_single:
            order = order[:-1]
        return order

    def batches(self, epoch: int = 0, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self.epoch_order(epoch)
        if order is not None:
            order = order.to(self.x.device)
        for step in range(start_step, len(self)):
            lo = step * self.batch_size
            if order is None:
                yield self.x[lo : lo + self.batch_size], self.y[lo : lo + self.batch_size]
            else:
                idx = order[lo : lo + self.batch_size]
                yield self.x.index_select(0, idx), self.y.index_select(0, idx)
