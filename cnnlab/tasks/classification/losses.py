"""The classification losses by name. Every loss takes raw logits (B, C) and integer targets (B,).

cross_entropy (with label smoothing) is the default; focal is the focal loss of Lin et al. 2017 (imbalanced data);
bce treats each class as a sigmoid output against a one-hot target; mse and mae compare softmax probabilities
with the one-hot target (the course's "regression-style" losses for classification).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.registry import Registry

LOSSES = Registry("loss")  # filled by the decorators below
ONEHOT_ERROR_LOSSES = {"mse", "mae"}  # "regression-style": probabilities against one-hot targets


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


class FocalLoss(nn.Module):
    """Focal loss (Lin et al. 2017): -alpha_t (1 - p_t)^gamma log p_t, averaged like weighted cross-entropy.

    `weight` (per class) plays alpha's role and the mean is weighted (sum w_t l_t / sum w_t), exactly as
    F.cross_entropy does, so gamma = 0 gives cross_entropy with the same weight.
    """

    def __init__(self, num_classes: int, gamma: float = 2.0, weight: torch.Tensor | None = None):
        super().__init__()
        if gamma < 0:
            raise CnnlabError(f"focal loss gamma must be >= 0, got {gamma}")
        self.gamma = gamma
        self.register_buffer("weight", weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(logits.float(), dim=1).gather(1, target[:, None]).squeeze(1)  # (B,) log p_t
        modulator = (1 - log_p.exp()).clamp_min(1e-12) ** self.gamma  # clamp: finite gradients for gamma < 1
        per = -modulator * log_p
        if self.weight is not None:
            w = self.weight[target]
            return (per * w).sum() / w.sum()
        return per.mean()


@LOSSES.register("focal", doc="focal loss (balance.focal_gamma; class weights act as alpha)")
def focal(num_classes: int, label_smoothing: float = 0.0, weight=None, gamma: float = 2.0) -> nn.Module:
    if label_smoothing:
        raise CnnlabError("the focal loss takes no label smoothing; drop --label-smoothing or use cross_entropy")
    return FocalLoss(num_classes, gamma, weight)


def create_loss(name: str, num_classes: int, **kwargs) -> nn.Module:
    return LOSSES.get(name)(num_classes, **kwargs)
