"""Samplers for imbalanced data: each epoch's index order is a pure function of (seed, epoch), so a resumed run
replays it exactly. Oversampling draws with replacement, each class equally likely; undersampling takes a balanced
subset that rotates through the majority classes.
"""

from __future__ import annotations

import torch

from cnnlab.errors import CnnlabError


def _generator(seed: int, epoch: int, stream: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 101 + stream)


class Sampler:
    """The index order of each epoch. Subclasses define `order` and `__len__` (indices per epoch)."""

    def order(self, seed: int, epoch: int) -> torch.Tensor:
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError


class OversampleSampler(Sampler):
    """Draws `num_samples` indices per epoch with replacement, each class equally likely (default N draws).

    Every sample's weight is 1 / (its class count), so a draw picks a class uniformly, then a sample of it.
    """

    def __init__(self, labels: torch.Tensor, num_classes: int, num_samples: int | None = None) -> None:
        y = labels.cpu().long()
        counts = torch.bincount(y, minlength=num_classes).double()
        self.weights = (1.0 / counts.clamp_min(1))[y]
        self.num_samples = int(num_samples or len(y))
        if self.num_samples < 1:
            raise CnnlabError(f"balance.epoch_samples must be positive, got {num_samples}")

    def order(self, seed: int, epoch: int) -> torch.Tensor:
        return torch.multinomial(self.weights, self.num_samples, replacement=True, generator=_generator(seed, epoch))

    def __len__(self) -> int:
        return self.num_samples


class UndersampleSampler(Sampler):
    """Each epoch takes `per_class` samples of every class (default: the smallest class's count), shuffled.

    A class's samples are read from an endless stream of its own shuffles (shuffle 0, then 1, ...), epoch e
    taking positions [e * per_class, (e + 1) * per_class): over ceil(n_c / per_class) epochs every sample of
    class c is used at least once.
    """

    def __init__(self, labels: torch.Tensor, num_classes: int, per_class: int | None = None) -> None:
        y = labels.cpu().long()
        self.members = [torch.nonzero(y == c).flatten() for c in range(num_classes)]
        self.members = [m for m in self.members if len(m)]
        smallest = min(len(m) for m in self.members)
        self.per_class = int(per_class or smallest)
        if self.per_class < 1:
            raise CnnlabError(f"balance.epoch_samples must be positive, got {per_class}")

    def _class_slice(self, c: int, seed: int, epoch: int) -> torch.Tensor:
        idx, n, m = self.members[c], len(self.members[c]), self.per_class
        lo, hi = epoch * m, (epoch + 1) * m
        parts = []
        for cycle in range(lo // n, (hi - 1) // n + 1):
            perm = torch.randperm(n, generator=_generator(seed, cycle, stream=1 + c))
            start, stop = max(lo - cycle * n, 0), min(hi - cycle * n, n)
            parts.append(idx[perm[start:stop]])
        return torch.cat(parts)

    def order(self, seed: int, epoch: int) -> torch.Tensor:
        chosen = torch.cat([self._class_slice(c, seed, epoch) for c in range(len(self.members))])
        return chosen[torch.randperm(len(chosen), generator=_generator(seed, epoch))]

    def __len__(self) -> int:
        return self.per_class * len(self.members)


def create_sampler(method: str, labels: torch.Tensor, num_classes: int, epoch_samples: int | None = None) -> Sampler:
    """`oversample` or `undersample`; epoch_samples: draws per epoch (oversample) or per class (undersample)."""
    if method == "oversample":
        return OversampleSampler(labels, num_classes, epoch_samples)
    if method == "undersample":
        return UndersampleSampler(labels, num_classes, epoch_samples)
    raise CnnlabError(f"unknown sampler '{method}': use oversample or undersample")
