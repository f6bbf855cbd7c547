"""Loss functions by name. Every loss takes raw logits (B, C) and integer targets (B,).

cross_entropy (with label smoothing) is the default; bce treats each class as a sigmoid output against a
one-hot target; mse and mae compare softmax probabilities with the one-hot target (the course's
"regression-style" losses for classification).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.registry import Registry

LOSSES = Registry("loss")
REGRESSION_LOSSES = {"mse", "mae"}


class CrossEntropy(nn.Module):
    def __init__(self, num_classes: int, label_smoothing: float = 0.0, weight: torch.Tensor | None = None):
        super().__init__()
        self.label_smoothing = label_smoothing
        self.register_buffer("weight", weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), target, weight=self.weight, label_smoothing=self.label_smoothing)


class OneHotLoss(nn.Module):
    """Losses against a one-hot target: bce on logits, mse / mae on softmax probabilities."""

    def __init__(self, num_classes: int, kind: str, label_smoothing: float = 0.0,
                 weight: torch.Tensor | None = None):
        super().__init__()
        self.num_classes = num_classes
        self.kind = kind
        self.label_smoothing = label_smoothing
        self.register_buffer("weight", weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        soft = target.is_floating_point()  # class probabilities (mixup / cutmix) instead of indices
        onehot = target.to(logits.dtype) if soft else F.one_hot(target, self.num_classes).to(logits.dtype)
        if self.label_smoothing:
            onehot = onehot * (1 - self.label_smoothing) + self.label_smoothing / self.num_classes
        if self.kind == "bce":
            per = F.binary_cross_entropy_with_logits(logits, onehot, reduction="none").sum(dim=1)
        elif self.kind == "mse":
            per = (logits.softmax(dim=1) - onehot).pow(2).mean(dim=1)
        else:
            per = (logits.softmax(dim=1) - onehot).abs().mean(dim=1)
        if self.weight is not None:
            w = onehot @ self.weight if soft else self.weight[target]
            return (per * w).sum() / w.sum()
        return per.mean()


@LOSSES.register("cross_entropy", doc="softmax cross-entropy (label_smoothing)")
def cross_entropy(num_classes: int, label_smoothing: float = 0.0, weight=None) -> nn.Module:
    return CrossEntropy(num_classes, label_smoothing, weight)


@LOSSES.register("bce", doc="binary cross-entropy per class on sigmoid outputs, one-hot targets")
def bce(num_classes: int, label_smoothing: float = 0.0, weight=None) -> nn.Module:
    return OneHotLoss(num_classes, "bce", label_smoothing, weight)


@LOSSES.register("mse", doc="mean squared error between softmax probabilities and one-hot targets")
def mse(num_classes: int, label_smoothing: float = 0.0, weight=None) -> nn.Module:
    return OneHotLoss(num_classes, "mse", label_smoothing, weight)


@LOSSES.register("mae", doc="mean absolute error between softmax probabilities and one-hot targets")
def mae(num_classes: int, label_smoothing: float = 0.0, weight=None) -> nn.Module:
    return OneHotLoss(num_classes, "mae", label_smoothing, weight)


def create_loss(name: str, num_classes: int, **kwargs) -> nn.Module:
    return LOSSES.get(name)(num_classes, **kwargs)
