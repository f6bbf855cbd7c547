"""Classification metrics: accumulated on the device (no host sync per step), reduced once per pass.

One confusion matrix per pass gives accuracy, macro precision / recall / F1 and balanced accuracy (and is the
artefact an evaluation returns); top-k counts are kept beside it; the one-hot error losses (mse / mae) also get
mse / mae of the probabilities. Two-class evaluations keep P(class 1) of every image for ROC AUC and PR AUC.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from cnnlab.tasks.base import Metric
from cnnlab.train import dist


class ConfusionMetrics(Metric):
    """A confusion matrix, top-k hits and (for the one-hot error losses) squared / absolute probability errors.

    `decide(logits) -> classes` is the decision rule (argmax, or a two-class threshold); without it, argmax."""

    state_names = ("confusion", "topk_hits", "sq_err", "abs_err")

    def __init__(self, num_classes: int, device: torch.device, top_k: int = 5, onehot_errors: bool = False,
                 decide: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        self.num_classes = num_classes
        self.top_k = top_k if 1 < top_k < num_classes else 0
        self.onehot_errors, self.decide = onehot_errors, decide
        self.device = device
        self.reset()

    def reset(self) -> None:
        c = self.num_classes
        self.confusion = torch.zeros(c * c, dtype=torch.int64, device=self.device)
        self.topk_hits = torch.zeros((), dtype=torch.int64, device=self.device)
        self.sq_err = torch.zeros((), dtype=torch.float64, device=self.device)
        self.abs_err = torch.zeros((), dtype=torch.float64, device=self.device)

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        """logits (B, C), target (B,) class indices."""
        pred = self.decide(logits) if self.decide is not None else logits.argmax(dim=1)
        self.confusion += torch.bincount(target * self.num_classes + pred, minlength=self.num_classes ** 2)
        if self.top_k:
            top = logits.topk(self.top_k, dim=1).indices
            self.topk_hits += (top == target[:, None]).any(dim=1).sum()
        if self.onehot_errors:
            probs = logits.float().softmax(dim=1)
            onehot = torch.nn.functional.one_hot(target, self.num_classes).float()
            self.sq_err += (probs - onehot).pow(2).mean(dim=1).sum().double()
            self.abs_err += (probs - onehot).abs().mean(dim=1).sum().double()

    def matrix(self) -> torch.Tensor:
        return self.confusion.view(self.num_classes, self.num_classes)

    def compute(self) -> dict[str, float]:
        """Keras-style names: accuracy, precision, recall, f1, balanced_accuracy, top5_accuracy, mse, mae."""
        count = int(self.confusion.sum())
        if count == 0:
            return {}
        logs = metrics_from_confusion(self.matrix().double().cpu())
        if self.top_k:
            logs[f"top{self.top_k}_accuracy"] = float(self.topk_hits) / count
        if self.onehot_errors:
            logs["mse"] = float(self.sq_err) / count
            logs["mae"] = float(self.abs_err) / count
        return logs

    def artefacts(self) -> dict[str, Any]:
        return {"confusion_matrix": self.matrix().cpu().tolist()}

    def running(self, count: int) -> dict[str, float]:
        return {"acc": float(self.matrix().diag().sum()) / count}


class BinaryScores(Metric):
    """Two classes: P(class 1) of every image of the pass, for ROC AUC and PR AUC at the end (gathered over the
    ranks, in rank order, so every image counts once)."""

    def __init__(self, probabilities: Callable[[torch.Tensor], torch.Tensor], device: torch.device) -> None:
        self.probabilities, self.device = probabilities, device
        self.reset()

    def reset(self) -> None:
        self.scores: list[torch.Tensor] = []
        self.targets: list[torch.Tensor] = []

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        self.scores.append(self.probabilities(logits)[:, 1])
        self.targets.append(target)

    def collected(self) -> tuple[torch.Tensor, torch.Tensor]:
        target = torch.cat(self.targets) if self.targets else torch.empty(0, dtype=torch.int64, device=self.device)
        score = torch.cat(self.scores) if self.scores else torch.empty(0, device=self.device)
        return target, score

    def all_reduce(self) -> None:
        target, score = self.collected()
        self.targets, self.scores = [dist.gather_cat(target)], [dist.gather_cat(score.float())]

    def compute(self) -> dict[str, float]:
        target, score = self.collected()
        return binary_scores(target, score) if len(target) else {}

    def state_dict(self) -> dict[str, Any]:
        return {}  # evaluation only: never saved mid-epoch


def metrics_from_confusion(cm: torch.Tensor) -> dict[str, float]:
    """cm[i, j] = count of true class i predicted as j. Macro averages over classes present in truth or prediction."""
    cm = cm.double()
    tp = cm.diag()
    support = cm.sum(dim=1)
    predicted = cm.sum(dim=0)
    precision = torch.where(predicted > 0, tp / predicted.clamp_min(1), torch.zeros_like(tp))
    recall = torch.where(support > 0, tp / support.clamp_min(1), torch.zeros_like(tp))
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp_min(1e-12),
                     torch.zeros_like(tp))
    present = (support > 0) | (predicted > 0)
    total = cm.sum().clamp_min(1)
    return {
        "accuracy": float(tp.sum() / total),
        "precision": float(precision[present].mean()) if present.any() else 0.0,
        "recall": float(recall[present].mean()) if present.any() else 0.0,
        "f1": float(f1[present].mean()) if present.any() else 0.0,
        "balanced_accuracy": float(recall[support > 0].mean()) if (support > 0).any() else 0.0,
    }


def roc_auc(target: torch.Tensor, score: torch.Tensor) -> float:
    """Area under the ROC curve of ``score`` for ``target == 1``, by the rank-sum (Mann-Whitney U) identity with
    average ranks for ties: equal to sklearn's roc_auc_score, without the 1-2 s of importing scikit-learn."""
    y, s = target.flatten().long().cpu(), score.flatten().double().cpu()
    _, inverse, counts = torch.unique(s, return_inverse=True, return_counts=True)
    ranks = (counts.cumsum(0) - (counts - 1) / 2).double()[inverse]  # 1-based, average over ties
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def average_precision(target: torch.Tensor, score: torch.Tensor) -> float:
    """Average precision (area under the step precision-recall curve) as sklearn's average_precision_score
    computes it: sum over distinct thresholds of (recall gain) x precision."""
    y, s = target.flatten().double().cpu(), score.flatten().double().cpu()
    order = torch.argsort(s, descending=True, stable=True)
    y, s = y[order], s[order]
    last = torch.ones(len(s), dtype=torch.bool)
    last[:-1] = s[1:] != s[:-1]  # the last index of each run of equal scores: one threshold each
    tps = y.cumsum(0)[last]
    seen = (torch.arange(1, len(s) + 1, dtype=torch.float64))[last]
    recall = tps / tps[-1]
    gain = torch.diff(recall, prepend=torch.zeros(1, dtype=torch.float64))
    return float((gain * tps / seen).sum())


def binary_scores(target: torch.Tensor, p_positive: torch.Tensor, prefix: str = "") -> dict[str, float]:
    """ROC AUC and PR AUC (average precision) of P(class 1) for a two-class task; {} if one class is missing."""
    if len(target) == 0 or int(target.min()) == int(target.max()):
        return {}
    return {prefix + "roc_auc": roc_auc(target, p_positive), prefix + "pr_auc": average_precision(target, p_positive)}


def per_class_report(cm: list[list[int]], class_names: list[str]) -> list[dict[str, float]]:
    """Precision, recall, F1 and support per class, for evaluate's report."""
    m = torch.tensor(cm, dtype=torch.float64)
    tp, support, predicted = m.diag(), m.sum(1), m.sum(0)
    rows = []
    for i, name in enumerate(class_names):
        p = float(tp[i] / predicted[i]) if predicted[i] else 0.0
        r = float(tp[i] / support[i]) if support[i] else 0.0
        f = 2 * p * r / (p + r) if p + r else 0.0
        rows.append({"class": name, "precision": p, "recall": r, "f1": f, "support": int(support[i])})
    return rows
