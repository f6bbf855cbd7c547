"""Classification metrics accumulated on the device (no host sync per step), reduced once per epoch.

One confusion matrix per epoch gives accuracy, macro precision / recall / F1 and balanced accuracy;
top-k counts are kept beside it; regression-style losses also get mse / mae on the probabilities.
"""

from __future__ import annotations

import torch

from cnnlab.train import dist


class MetricAccumulator:
    """Sum of losses, a confusion matrix and top-k hits over an epoch."""

    def __init__(self, num_classes: int, device: torch.device, top_k: int = 5, regression: bool = False) -> None:
        self.num_classes = num_classes
        self.top_k = top_k if 1 < top_k < num_classes else 0
        self.regression = regression
        self.device = device
        self.reset()

    def reset(self) -> None:
        c = self.num_classes
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self.confusion = torch.zeros(c * c, dtype=torch.int64, device=self.device)
        self.topk_hits = torch.zeros((), dtype=torch.int64, device=self.device)
        self.sq_err = torch.zeros((), dtype=torch.float64, device=self.device)
        self.abs_err = torch.zeros((), dtype=torch.float64, device=self.device)
        self.count = 0

    def state_dict(self) -> dict:
        """The running sums (copies), so a resumed epoch reports the same train metrics."""
        names = ("loss_sum", "confusion", "topk_hits", "sq_err", "abs_err")
        return {"count": self.count, **{k: getattr(self, k).detach().cpu().clone() for k in names}}

    def load_state_dict(self, state: dict) -> None:
        self.count = int(state["count"])
        for k in ("loss_sum", "confusion", "topk_hits", "sq_err", "abs_err"):
            setattr(self, k, state[k].to(self.device).clone())

    @torch.no_grad()
    def update(self, logits: torch.Tensor, target: torch.Tensor, loss: torch.Tensor,
               pred: torch.Tensor | None = None) -> None:
        """logits (B, C), target (B,) class indices, loss: the batch mean; pred: decisions (default argmax)."""
        n = target.shape[0]
        self.count += n
        self.loss_sum += loss.detach().double() * n
        if pred is None:
            pred = logits.argmax(dim=1)
        self.confusion += torch.bincount(target * self.num_classes + pred, minlength=self.num_classes ** 2)
        if self.top_k:
            top = logits.topk(self.top_k, dim=1).indices
            self.topk_hits += (top == target[:, None]).any(dim=1).sum()
        if self.regression:
            probs = logits.float().softmax(dim=1)
            onehot = torch.nn.functional.one_hot(target, self.num_classes).float()
            self.sq_err += (probs - onehot).pow(2).mean(dim=1).sum().double()
            self.abs_err += (probs - onehot).abs().mean(dim=1).sum().double()

    def all_reduce(self) -> MetricAccumulator:
        """Sum every rank's counts into this accumulator (distributed runs; a no-op in a single process)."""
        if dist.active():
            for k in ("loss_sum", "confusion", "topk_hits", "sq_err", "abs_err"):
                dist.all_reduce_sum(getattr(self, k))
            self.count = int(dist.all_reduce_sum(torch.tensor([self.count], dtype=torch.int64)).item())
        return self

    def reduced_copy(self) -> MetricAccumulator:
        """The sums over every rank, leaving this rank's own counts untouched (for a checkpoint mid-epoch)."""
        copy = MetricAccumulator(self.num_classes, self.device, self.top_k or 0, self.regression)
        copy.top_k = self.top_k
        copy.load_state_dict(self.state_dict())
        return copy.all_reduce()

    def compute(self, prefix: str = "") -> dict[str, float]:
        """Keras-style names: loss, accuracy, top5_accuracy, precision, recall, f1, balanced_accuracy."""
        if self.count == 0:
            return {}
        cm = self.confusion.view(self.num_classes, self.num_classes).double().cpu()
        logs = {"loss": float(self.loss_sum) / self.count}
        logs.update(metrics_from_confusion(cm))
        if self.top_k:
            logs[f"top{self.top_k}_accuracy"] = float(self.topk_hits) / self.count
        if self.regression:
            logs["mse"] = float(self.sq_err) / self.count
            logs["mae"] = float(self.abs_err) / self.count
        return {prefix + k: v for k, v in logs.items()}

    def confusion_matrix(self) -> list[list[int]]:
        return self.confusion.view(self.num_classes, self.num_classes).cpu().tolist()


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
