"""A classifier's outputs outside PyTorch: the head of an exported graph (logits, or probabilities with the run's
rule inside), an exported graph's output read back as probabilities, and the parity gate against PyTorch.

fp32 exports must agree on the top-1 class of at least 99.9% of the checked images with probabilities within
1e-3 of PyTorch's; otherwise the export fails (exit 1) saying which images disagreed. An int8 model is measured
the same way and reported (agreement, largest probability change, accuracy on the whole split), not gated.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from cnnlab.errors import ParityError
from cnnlab.tasks.classification.task import main_output

MIN_AGREEMENT = 0.999
MAX_PROB_DIFF = 1e-3


class ClassifierOutput(nn.Module):
    """model output -> main logits -> [class probabilities: softmax, or normalised sigmoids for the bce loss]."""

    def __init__(self, probabilities: bool, bce: bool) -> None:
        super().__init__()
        self.probabilities, self.bce = probabilities, bce

    def forward(self, output: torch.Tensor) -> torch.Tensor:
        logits = main_output(output)
        if not self.probabilities:
            return logits
        if self.bce:  # one sigmoid per class, normalized to sum to 1 (what the run's Predictor reports)
            probs = logits.sigmoid()
            return probs / probs.sum(dim=1, keepdim=True).clamp_min(1e-12)
        return logits.softmax(dim=1)


class ClassifierExport:
    """What `cnnlab export` and `predict --backend onnx` need of a classifier: the graph's head, model.json's
    `output`, the graph's output read back as probabilities, and the parity check against PyTorch."""

    def __init__(self, bce: bool) -> None:
        self.bce = bce  # the run's loss is bce: probabilities are normalised sigmoids

    def head(self, probabilities: bool) -> nn.Module:
        return ClassifierOutput(probabilities, self.bce)

    def output_spec(self, probabilities: bool) -> dict[str, Any]:
        """model.json's `output`: what the graph returns."""
        return {"name": "output", "probabilities": probabilities, "bce": self.bce,
                "meaning": "class probabilities" if probabilities else "logits (softmax them for probabilities)"}

    @staticmethod
    def predictions(out: np.ndarray, output: dict[str, Any]) -> np.ndarray:
        """The graph's output (model.json's `output` says what it is) as class probabilities, float64."""
        return to_probabilities(out, output)

    @staticmethod
    def compare(reference: np.ndarray, exported: np.ndarray, y: torch.Tensor, ids: list[str]) -> dict[str, Any]:
        return compare(reference, exported, y, ids)

    @staticmethod
    def gate(result: dict[str, Any], what: str) -> None:
        gate(result, what)


def to_probabilities(out: np.ndarray, output: dict[str, Any]) -> np.ndarray:
    """An exported graph's output (model.json's `output` says which) as class probabilities (the Predictor's
    rule), float64."""
    if output["probabilities"]:
        return out.astype(np.float64)
    z = out.astype(np.float64)
    if output["bce"]:
        p = 1 / (1 + np.exp(-z))
        return p / np.clip(p.sum(axis=1, keepdims=True), 1e-12, None)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def compare(reference: np.ndarray, exported: np.ndarray, y: torch.Tensor, ids: list[str]) -> dict[str, Any]:
    """Agreement of the top-1 class, the largest probability difference, and both accuracies."""
    ref_top, exp_top = reference.argmax(1), exported.argmax(1)
    labels = y.numpy()
    diff = np.abs(reference - exported).max(axis=1)
    disagree = np.flatnonzero(ref_top != exp_top)
    return {"images": len(labels), "top1_agreement": float((ref_top == exp_top).mean()),
            "max_abs_prob_diff": float(diff.max()) if len(diff) else 0.0,
            "accuracy_torch": float((ref_top == labels).mean()), "accuracy_export": float((exp_top == labels).mean()),
            "disagreeing": [{"id": ids[i], "torch": int(ref_top[i]), "export": int(exp_top[i])}
                            for i in disagree[:10]]}


def gate(result: dict[str, Any], what: str) -> None:
    """Refuse an fp32 export that does not match PyTorch."""
    if result["top1_agreement"] >= MIN_AGREEMENT and result["max_abs_prob_diff"] <= MAX_PROB_DIFF:
        return
    worst = ", ".join(f"{d['id']} (torch {d['torch']}, export {d['export']})" for d in result["disagreeing"][:3])
    raise ParityError(f"the exported {what} does not match PyTorch on {result['images']} images: top-1 agreement "
                      f"{result['top1_agreement']:.2%} (needs {MIN_AGREEMENT:.1%}), largest probability difference "
                      f"{result['max_abs_prob_diff']:.2e} (needs <= {MAX_PROB_DIFF:g})"
                      + (f"; disagreeing: {worst}" if worst else "")
                      + "; nothing was written (an earlier export is left as it was)")
