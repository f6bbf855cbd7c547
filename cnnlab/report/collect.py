"""The numbers of a report: one streamed pass of the model over a split, and which images the page shows.

    preds = predict_split(run, view)         # probabilities (N, C), decisions, labels; images are not kept
    scores = split_scores(preds, names)      # accuracy, per class, confusion matrix, calibration, ROC / PR
    picks = choose_images(preds, per_cell=24)  # rows for each confusion cell, top losses, Grad-CAM per class

Only N x C probabilities stay in memory; images are read again (`SplitView.take`) for the few rows chosen.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from cnnlab.inference import Run
from cnnlab.report.split import SplitView
from cnnlab.tasks.classification.metrics import metrics_from_confusion, per_class_report

CHUNK_BYTES = 64 * 2**20  # decoded images per chunk of the streamed pass


@dataclass
class Predictions:
    probs: np.ndarray  # (N, C) float32
    pred: np.ndarray  # (N,) the decision (argmax, or the run's threshold for two classes)
    labels: np.ndarray  # (N,) true class
    ids: list[str]
    threshold: float | None = None

    @property
    def confidence(self) -> np.ndarray:
        """The probability of the predicted class."""
        return self.probs[np.arange(len(self.pred)), self.pred]

    @property
    def loss(self) -> np.ndarray:
        """-log p(true class) per image."""
        return -np.log(np.clip(self.probs[np.arange(len(self.labels)), self.labels], 1e-12, None))


def chunk_size(view: SplitView, batch_size: int) -> int:
    """Images per chunk: about CHUNK_BYTES of decoded pixels, a multiple of the evaluation batch (so batches are
    those of `cnnlab evaluate`), at most 8192."""
    c, (h, w) = view.geom.channels, view.geom.size
    n = max(1, CHUNK_BYTES // (c * h * w))
    return int(min(8192, max(batch_size, n // batch_size * batch_size)))


def predict_split(run: Run, view: SplitView) -> Predictions:
    """Probabilities and decisions of the run's predictor over the whole split, a chunk at a time."""
    predictor = run.predictor
    batch = run.config.train.eval_batch_size
    probs = [predictor.predict_proba(x, batch) for x in view.batches(chunk_size(view, batch))]
    p = torch.cat(probs) if probs else torch.empty(0, len(run.class_names))
    pred = predictor.decide(p).numpy()
    return Predictions(p.numpy().astype(np.float32), pred, np.asarray(view.labels, dtype=np.int64), view.ids,
                       run.task.decision_threshold)


def confusion(labels: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    return np.bincount(labels * k + pred, minlength=k * k).reshape(k, k)


def calibration(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> dict[str, Any]:
    """Reliability diagram of the top-label confidence: per bin count, accuracy and mean confidence; ECE and MCE
    (Guo et al. 2017: equal-width bins, ECE = sum over bins of n_b / N * |acc_b - conf_b|)."""
    conf = probs.max(1)
    correct = (probs.argmax(1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    rows, ece, mce = [], 0.0, 0.0
    for b in range(bins):
        mask = which == b
        n = int(mask.sum())
        acc = float(correct[mask].mean()) if n else 0.0
        mean_conf = float(conf[mask].mean()) if n else 0.0
        if n:
            gap = abs(acc - mean_conf)
            ece += n / len(conf) * gap
            mce = max(mce, gap)
        rows.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "count": n, "accuracy": acc,
                     "confidence": mean_conf})
    return {"bins": rows, "ece": ece, "mce": mce, "mean_confidence": float(conf.mean()) if len(conf) else 0.0,
            "accuracy": float(correct.mean()) if len(conf) else 0.0}


def binary_curves(preds: Predictions, cm: np.ndarray) -> dict[str, Any] | None:
    """Two classes: ROC and PR curves of P(class 1), their areas, and the operating point of the decision used."""
    if preds.probs.shape[1] != 2 or len(np.unique(preds.labels)) < 2:
        return None
    from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

    y, score = preds.labels, preds.probs[:, 1]
    fpr, tpr, _ = roc_curve(y, score)
    precision, recall, _ = precision_recall_curve(y, score)
    neg, pos, predicted_pos = cm[0].sum(), cm[1].sum(), cm[:, 1].sum()
    return {"fpr": fpr, "tpr": tpr, "precision": precision, "recall": recall,
            "roc_auc": float(roc_auc_score(y, score)), "pr_auc": float(average_precision_score(y, score)),
            "threshold": preds.threshold if preds.threshold is not None else 0.5,
            "threshold_source": "the run's decision threshold" if preds.threshold is not None else "argmax",
            "point": {"fpr": float(cm[0, 1] / neg) if neg else 0.0, "tpr": float(cm[1, 1] / pos) if pos else 0.0,
                      "precision": float(cm[1, 1] / predicted_pos) if predicted_pos else 0.0},
            "positive_rate": float(pos / len(y))}


def split_scores(preds: Predictions, class_names: list[str]) -> dict[str, Any]:
    """Accuracy, balanced accuracy, macro F1, mean loss, top-5, per-class rows, confusion matrix, calibration."""
    k = len(class_names)
    cm = confusion(preds.labels, preds.pred, k)
    per_class = per_class_report(cm.tolist(), class_names)
    present = [r for r in per_class if r["support"]]
    n = max(1, len(preds.labels))
    out = {"count": len(preds.labels), "confusion_matrix": cm, "per_class": per_class,
           "accuracy": float(np.trace(cm) / n), "loss": float(preds.loss.mean()) if len(preds.labels) else 0.0,
           "balanced_accuracy": float(np.mean([r["recall"] for r in present])) if present else 0.0,
           "macro_f1": metrics_from_confusion(torch.from_numpy(cm))["f1"],  # val_f1's rule: classes present only
           "calibration": calibration(preds.probs, preds.labels), "binary": binary_curves(preds, cm)}
    if k > 5:
        top5 = np.argsort(-preds.probs, axis=1)[:, :5]
        out["top5_accuracy"] = float((top5 == preds.labels[:, None]).any(1).mean())
    return out


@dataclass
class Picks:
    """Rows of the split that the page shows."""

    cells: dict[tuple[int, int], list[int]] = field(default_factory=dict)  # (true, pred) -> most confident first
    top_losses: list[int] = field(default_factory=list)
    gallery: dict[int, dict[str, list[int]]] = field(default_factory=dict)  # class -> {"correct": .., "wrong": ..}
    gallery_note: str = ""
    feature_row: int | None = None

    def cam_rows(self) -> list[int]:
        rows = list(self.top_losses) + [r for g in self.gallery.values() for rs in g.values() for r in rs]
        return sorted(set(rows))

    def all_rows(self) -> list[int]:
        rows = set(self.cam_rows()) | {r for rs in self.cells.values() for r in rs}
        return sorted(rows | ({self.feature_row} if self.feature_row is not None else set()))


def _by_confidence(rows: np.ndarray, conf: np.ndarray) -> list[int]:
    """Rows sorted by confidence, highest first (ties: the earlier row first)."""
    return [int(r) for r in rows[np.lexsort((rows, -conf[rows]))]]


def choose_images(preds: Predictions, per_cell: int = 24, top: int = 16, per_class: int = 2,
                  classes: int = 10) -> Picks:
    """Which rows the page shows: the `per_cell` most confident of every confusion cell, the `top` mistakes with
    the highest loss, and for up to `classes` classes (the lowest recall first when there are more) the
    `per_class` most confident correct and wrong images, for Grad-CAM."""
    conf, labels, pred = preds.confidence, preds.labels, preds.pred
    picks = Picks()
    order = np.lexsort((pred, labels))
    cell_of = labels[order] * preds.probs.shape[1] + pred[order]
    for rows in np.split(order, np.flatnonzero(np.diff(cell_of)) + 1):
        if len(rows):
            picks.cells[(int(labels[rows[0]]), int(pred[rows[0]]))] = _by_confidence(rows, conf)[:per_cell]
    wrong = np.flatnonzero(labels != pred)
    loss = preds.loss
    picks.top_losses = [int(r) for r in wrong[np.lexsort((wrong, -loss[wrong]))][:top]]
    k = preds.probs.shape[1]
    support = np.bincount(labels, minlength=k)
    recall = np.bincount(labels[labels == pred], minlength=k) / np.maximum(support, 1)
    shown = [c for c in np.lexsort((np.arange(k), recall)) if support[c]]
    if len(shown) > classes:
        picks.gallery_note = f"the {classes} classes with the lowest recall, of {len(shown)}"
        shown = shown[:classes]
    for c in sorted(int(c) for c in shown):
        right = np.flatnonzero((labels == c) & (pred == c))
        missed = np.flatnonzero((labels == c) & (pred != c))
        picks.gallery[c] = {"correct": _by_confidence(right, conf)[:per_class],
                            "wrong": _by_confidence(missed, conf)[:per_class]}
    correct = np.flatnonzero(labels == pred)
    picks.feature_row = _by_confidence(correct, conf)[0] if len(correct) else (0 if len(labels) else None)
    return picks
