"""Batches from decoded tensors: shuffled per epoch from (seed, epoch), so any step of any epoch can be
recomputed exactly (resume), with no per-image Python work in the epoch loop.

Distributed runs shard per step: with `shard=(rank, world)` a rank yields its contiguous part of every global
batch (`rank_slice`), so the ranks together see exactly the single-process batches, none padded or repeated.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch

from cnnlab.errors import CnnlabError

if TYPE_CHECKING:
    from cnnlab.data.samplers import Sampler


def rank_slice(n: int, rank: int, world: int) -> tuple[int, int]:
    """[lo, hi) of `rank` in a contiguous split of n items into `world` parts as equal as possible."""
    q, rem = divmod(n, world)
    lo = rank * q + min(rank, rem)
    return lo, lo + q + (1 if rank < rem else 0)


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
                 sampler: Sampler | None = None, shard: tuple[int, int] | None = None):
        self.x, self.y = x, y
        self.sampler = sampler
        self.shard = shard if shard is not None and shard[1] > 1 else None  # (rank, world) of a distributed run
        n = len(sampler) if sampler is not None else len(y)
        if batch_size == "full":
            batch_size = n
        if isinstance(batch_size, str) or batch_size < 1:
            raise CnnlabError(f"batch size must be a positive number or 'full', got {batch_size!r}")
        self.batch_size = min(int(batch_size), n)
        self.shuffle, self.seed = shuffle, seed
        # A final batch of one sample breaks batch norm in training (and one smaller than the world leaves a rank
        # without data); it joins the next epoch's shuffle instead.
        tail, world = n % self.batch_size, self.shard[1] if self.shard else 1
        self.drop_tail = tail if (shuffle or sampler is not None) and 0 < tail < max(2, world) and n > tail else 0

    def _epoch_size(self) -> int:
        return len(self.sampler) if self.sampler is not None else len(self.y)

    def __len__(self) -> int:
        n = self._epoch_size() - self.drop_tail
        return (n + self.batch_size - 1) // self.batch_size

    def epoch_order(self, epoch: int) -> torch.Tensor | None:
        """Indices of epoch `epoch` in batch order (None: stored order); a pure function of (seed, epoch)."""
        order = None
        if self.sampler is not None:
            order = self.sampler.order(self.seed, epoch)
        elif self.shuffle:
            order = epoch_permutation(len(self.y), self.seed, epoch)
        if order is not None and self.drop_tail:
            order = order[: -self.drop_tail]
        return order

    def batches(self, epoch: int = 0, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self.epoch_order(epoch)
        if order is not None:
            order = order.to(self.x.device)
        n = len(self.y)
        for step in range(start_step, len(self)):
            lo, hi = step * self.batch_size, min((step + 1) * self.batch_size, n if order is None else len(order))
            if self.shard is not None:  # this rank's part of the global batch
                a, b = rank_slice(hi - lo, *self.shard)
                lo, hi = lo + a, lo + b
            if order is None:
                yield self.x[lo:hi], self.y[lo:hi]
            else:
                idx = order[lo:hi]
                yield self.x.index_select(0, idx), self.y.index_select(0, idx)

    def step_indices(self, order: torch.Tensor | None, step: int) -> list[int]:
        """This rank's sample indices of global step `step` (the streaming path's batch sampler)."""
        total = len(order) if order is not None else len(self.y)
        lo, hi = step * self.batch_size, min((step + 1) * self.batch_size, total)
        if self.shard is not None:
            a, b = rank_slice(hi - lo, *self.shard)
            lo, hi = lo + a, lo + b
        return (order[lo:hi] if order is not None else torch.arange(lo, hi)).tolist()
