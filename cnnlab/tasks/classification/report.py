"""What `cnnlab evaluate` and `cnnlab predict` show for a classifier: the metrics line, the per-class table and the
confusion matrix; prediction rows (label, confidence, probabilities) and their Kaggle-style CSV columns."""

from __future__ import annotations

from typing import Any

import torch

EVAL_KEYS = ("loss", "accuracy", "balanced_accuracy", "precision", "recall", "f1")
EXTRA_KEYS = ("roc_auc", "pr_auc", "decision_threshold", "mse", "mae")


def print_evaluation(result: dict[str, Any], class_names: list[str], console: Any) -> None:
    """The metrics of an `evaluate` result on one line, then its per-class and confusion tables (rich)."""
    from rich.table import Table

    keys = [k for k in EVAL_KEYS if k in result]
    keys += [k for k in result if k.startswith("top") or k in EXTRA_KEYS]
    console.print(f"{result['data']} [{result['split']}], {result['count']} images: "
                  + "  ".join(f"{k} {result[k]:.4f}" for k in keys), soft_wrap=True, markup=False)
    per = Table(title="per class")
    for col in ("class", "precision", "recall", "f1", "support"):
        per.add_column(col, justify="left" if col == "class" else "right")
    for row in result["per_class"]:
        per.add_row(row["class"], f"{row['precision']:.3f}", f"{row['recall']:.3f}", f"{row['f1']:.3f}",
                    str(row["support"]))
    console.print(per)
    cm = Table(title="confusion matrix (rows: true, columns: predicted)")
    cm.add_column("")
    for name in class_names:
        cm.add_column(name[:10], justify="right")
    for name, row in zip(class_names, result["confusion_matrix"]):
        cm.add_row(name[:16], *map(str, row))
    console.print(cm)


def prediction_rows(ids: list[str], probs: torch.Tensor, labels: torch.Tensor,
                    class_names: list[str]) -> list[dict[str, Any]]:
    """One row per image: id, predicted label, its probability, and every class's probability."""
    return [{"id": ident, "label": class_names[int(k)], "confidence": float(p[int(k)]),
             "probabilities": dict(zip(class_names, map(float, p)))}
            for ident, p, k in zip(ids, probs, labels)]


def csv_columns(label_col: str, class_names: list[str]) -> list[str]:
    """id, the label column (named as in the training CSV, else 'label'), then prob_<class> each."""
    return ["id", label_col, *(f"prob_{c}" for c in class_names)]


def csv_row(row: dict[str, Any], class_names: list[str]) -> list[Any]:
    return [row["id"], row["label"], *(f"{row['probabilities'][c]:.6f}" for c in class_names)]
