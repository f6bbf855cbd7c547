"""Batches from decoded tensors: shuffled per epoch from (seed, epoch), so any step of any epoch can be
recomputed exactly (resume), with no per-image Python work in the epoch loop.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from cnnlab.errors import CnnlabError


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffled order of epoch `epoch`: a pure function of (seed, epoch)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


class TensorBatches:
    """Mini-batches of uint8 images (N, C, H, W) and labels held in memory (on the training device)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int | str, shuffle: bool, seed: int = 0):
        self.x, self.y = x, y
        n = len(y)
        if batch_size == "full":
            batch_size = n
        if isinstance(batch_size, str) or batch_size < 1:
            raise CnnlabError(f"batch size must be a positive number or 'full', got {batch_size!r}")
        self.batch_size = min(int(batch_size), n)
        self.shuffle, self.seed = shuffle, seed
        # A final batch of one sample breaks batch norm in training; it joins the next epoch's shuffle instead.
        self.drop_single = shuffle and n % self.batch_size == 1 and n > 1

    def __len__(self) -> int:
        n = len(self.y) - (1 if self.drop_single else 0)
        return (n + self.batch_size - 1) // self.batch_size

    def batches(self, epoch: int = 0, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.y)
        if self.shuffle:
            order = epoch_permutation(n, self.seed, epoch).to(self.x.device)
            if self.drop_single:
                order = order[:-1]
        else:
            order = None
        for step in range(start_step, len(self)):
            lo = step * self.batch_size
            if order is None:
                yield self.x[lo : lo + self.batch_size], self.y[lo : lo + self.batch_size]
            else:
                idx = order[lo : lo + self.batch_size]
                yield self.x.index_select(0, idx), self.y.index_select(0, idx)
