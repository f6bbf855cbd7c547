"""Inference with a trained model: uint8 images in, the task's outputs, predictions and metrics out.

A Predictor holds a model, its task (cnnlab.tasks: what the outputs mean, the metrics, the decision rule), the
preprocessing and the precision; no optimizer and no callbacks. The Trainer evaluates through one, and `load_run`
builds only a Predictor, so evaluate / predict never construct a torch optimizer (which imports torch._dynamo,
about 2 s). Batches are opaque `(inputs, targets)` pairs: only the task looks inside a target.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 / fp16 autocast on `device`, or nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


class Predictor:
    """Eval-mode forward passes of a model on uint8 (B, C, H, W) batches, with its preprocessing and precision."""

    def __init__(self, model: nn.Module, task: Any, preprocess: Callable[[Any], Any], device: torch.device,
                 precision: str = "fp32") -> None:
        self.model, self.task, self.preprocess, self.device, self.precision = model, task, preprocess, device, precision

    @torch.no_grad()
    def outputs(self, xb: Any) -> Any:
        """The task's outputs (a classifier: main logits (B, C)) of a uint8 batch already on the device."""
        self.model.eval()
        with autocast(self.device, self.precision):
            return self.task.outputs(self.model, self.preprocess(xb))

    @torch.no_grad()
    def predict(self, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """The task's predictions (a classifier: class probabilities (N, C)) on the CPU for uint8 images."""
        out = [self.task.predictions(self.outputs(x[lo : lo + batch_size].to(self.device))).cpu()
               for lo in range(0, len(x), batch_size)]
        return torch.cat(out) if out else torch.empty(0, self.task.num_outputs)

    predict_proba = predict  # a classifier's predictions are its class probabilities

    def decide(self, predictions: Any) -> Any:
        """The task's decision (a classifier: the class of each row, by argmax or its threshold)."""
        return self.task.decide(predictions)

    @torch.no_grad()
    def evaluate(self, batches: Any, prefix: str = "val_") -> tuple[dict[str, float], dict[str, Any]]:
        """The task's metrics with `prefix` and its artefacts (a classifier: the confusion matrix) over all of
        `batches` (an object with .batches(), or an iterable of batches).

        Sharded batches (a distributed run) are evaluated exactly: each rank updates the metrics with its part of
        every batch, and the metrics are reduced over the ranks, so every image counts once.
        """
        self.model.eval()
        metrics = self.task.metrics(self.device, evaluation=True)
        for xb, yb in _iterate(batches):
            if len(yb) == 0:  # a rank's part of a batch smaller than the world
                continue
            with autocast(self.device, self.precision):
                loss, out = self.task.forward_eval(self.model, self.preprocess(xb), yb)
            metrics.update(out, yb, loss)
        if getattr(batches, "shard", None) is not None:
            metrics.all_reduce()
        return metrics.compute(prefix), metrics.artefacts()


def _iterate(batches: Any) -> Iterable[tuple[Any, Any]]:
    return batches.batches() if hasattr(batches, "batches") else batches
