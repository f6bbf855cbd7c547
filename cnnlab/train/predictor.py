"""Inference with a trained model: uint8 images in, logits, probabilities, classes and metrics out.

A Predictor holds no optimizer and no callbacks. The Trainer evaluates through one, and `load_run` builds only a
Predictor, so evaluate / predict never construct a torch optimizer (which imports torch._dynamo, about 2 s).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.train import dist
from cnnlab.train.metrics import MetricAccumulator, binary_scores


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 / fp16 autocast on `device`, or nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def main_output(out: Any) -> torch.Tensor:
    """The main logits of a model output; a tuple is (logits, *auxiliary logits), e.g. GoogLeNet's."""
    return out[0] if isinstance(out, (tuple, list)) else out


class Predictor:
    """Eval-mode forward passes of a model on uint8 (B, C, H, W) batches, with its preprocessing and precision."""

    optimizer = None  # a Predictor never trains (code written for a Trainer can tell)

    def __init__(self, model: nn.Module, preprocess: Callable[[torch.Tensor], torch.Tensor], device: torch.device,
                 precision: str = "fp32", *, num_classes: int, loss_fn: nn.Module | None = None, top_k: int = 5,
                 regression: bool = False, decision_threshold: float | None = None) -> None:
        self.model, self.preprocess, self.device, self.precision = model, preprocess, device, precision
        self.num_classes, self.loss_fn, self.top_k, self.regression = num_classes, loss_fn, top_k, regression
        self.decision_threshold = decision_threshold  # two classes: predict 1 when P(1) >= this (else argmax)

    def fit(self, *args: Any, **kwargs: Any) -> None:
        raise CnnlabError("this model was loaded for evaluation and prediction (load_run) and has no optimizer: "
                          "to train from its weights, use cnnlab.fit(..., weights='RUN/best.safetensors')")

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Class probabilities (B, C) from logits: softmax, or normalised sigmoids for the bce loss."""
        if getattr(self.loss_fn, "kind", None) == "bce":
            probs = logits.float().sigmoid()
            return probs / probs.sum(dim=1, keepdim=True).clamp_min(1e-12)
        return logits.float().softmax(dim=1)

    def decide(self, probs: torch.Tensor) -> torch.Tensor:
        """Predicted classes (B,): argmax, or for two classes with a decision threshold, P(1) >= threshold."""
        if self.decision_threshold is not None and probs.shape[1] == 2:
            return (probs[:, 1] >= self.decision_threshold).long()
        return probs.argmax(dim=1)

    @torch.no_grad()
    def logits(self, xb: torch.Tensor) -> torch.Tensor:
        """Main logits (B, C) of a uint8 batch already on the device."""
        self.model.eval()
        with autocast(self.device, self.precision):
            return main_output(self.model(self.preprocess(xb)))

    @torch.no_grad()
    def predict_proba(self, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """Class probabilities (N, C) on the CPU for uint8 images (N, C, H, W)."""
        out = [self.probabilities(self.logits(x[lo : lo + batch_size].to(self.device))).cpu()
               for lo in range(0, len(x), batch_size)]
        return torch.cat(out) if out else torch.empty(0, self.num_classes)

    @torch.no_grad()
    def evaluate(self, batches: Any, prefix: str = "val_") -> tuple[dict[str, float], list[list[int]]]:
        """Metrics with `prefix` and the confusion matrix over all of `batches` (an object with .batches()).

        Sharded batches (a distributed run) are evaluated exactly: each rank counts its part of every batch, the
        counts are summed over the ranks and the two-class scores gathered, so every image counts once.
        """
        self.model.eval()
        acc = MetricAccumulator(self.num_classes, self.device, self.top_k, self.regression)
        binary = self.num_classes == 2
        scores, targets = [], []  # two classes: P(class 1) for ROC AUC / PR AUC
        for xb, yb in _iterate(batches):
            if len(yb) == 0:  # a rank's part of a batch smaller than the world
                continue
            with autocast(self.device, self.precision):
                out = main_output(self.model(self.preprocess(xb)))
                loss = self.loss_fn(out, yb)
            pred = None
            if binary:
                probs = self.probabilities(out)
                scores.append(probs[:, 1])
                targets.append(yb)
                pred = self.decide(probs)
            acc.update(out.float(), yb, loss, pred)
        sharded = getattr(batches, "shard", None) is not None
        if sharded:
            acc.all_reduce()
        logs = acc.compute(prefix)
        if binary:
            target = torch.cat(targets) if targets else torch.empty(0, dtype=torch.int64, device=self.device)
            score = torch.cat(scores) if scores else torch.empty(0, device=self.device)
            if sharded:
                target, score = dist.gather_cat(target), dist.gather_cat(score.float())
            if len(target):
                logs.update(binary_scores(target, score, prefix))
        return logs, acc.confusion_matrix()


def _iterate(batches: Any) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    return batches.batches() if hasattr(batches, "batches") else batches
