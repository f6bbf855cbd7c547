"""The training loop: forward -> loss -> backward -> optimizer step, with the callback calls written inline.

One Trainer runs fit / evaluate / predict on tensors. Everything random in an epoch derives from
(seed, epoch), so a run resumed from its last checkpoint replays the same batches.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import nn

from cnnlab.data.loader import TensorBatches
from cnnlab.errors import CnnlabError
from cnnlab.train.callbacks import Callback
from cnnlab.train.checkpoint import save_weights
from cnnlab.train.faults import NonFiniteLoss, forward_backward, raise_if_nonfinite
from cnnlab.train.metrics import MetricAccumulator, binary_scores


def resolve_device(name: str = "auto") -> torch.device:
    """auto: cuda, then mps, then cpu."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise CnnlabError(f"unknown device '{name}': use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CnnlabError("--device cuda was asked for but no CUDA GPU is available; use --device cpu or auto")
    return device


def cpu_has_native_bf16() -> bool:
    """AMX tiles or AVX512-BF16: bf16 matmuls/convolutions run natively and fast."""
    cpu = torch.cpu
    checks = [getattr(cpu, "_is_amx_tile_supported", None), getattr(cpu, "_is_avx512_bf16_supported", None)]
    return any(bool(c()) for c in checks if c is not None)


def resolve_precision(precision: str, device: torch.device) -> str:
    """auto: bf16 on GPUs that support it and on CPUs with native bf16 (AMX / AVX512-BF16); fp32 elsewhere."""
    if precision not in ("auto", "fp32", "bf16", "fp16"):
        raise CnnlabError(f"unknown precision '{precision}': use auto, fp32, bf16 or fp16")
    if precision != "auto":
        if precision == "fp16" and device.type == "cpu":
            raise CnnlabError("fp16 training is for GPUs; on the CPU use --precision bf16 or fp32")
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        return "bf16" if cpu_has_native_bf16() else "fp32"
    return "fp32"


class Trainer:
    """Holds the model, loss, optimizer, schedule and callbacks of one run."""

    def __init__(self, model: nn.Module, loss_fn: nn.Module, optimizer: torch.optim.Optimizer | None, *,
                 num_classes: int, preprocess: Callable[[torch.Tensor], torch.Tensor],
                 augment: Callable[[torch.Tensor, torch.Tensor], tuple] | None = None,
                 device: torch.device, precision: str = "fp32", callbacks: list[Callback] | None = None,
                 top_k: int = 5, regression: bool = False, grad_clip: float | None = None,
                 console: Console | None = None) -> None:
        self.model, self.loss_fn, self.optimizer = model, loss_fn, optimizer
        self.num_classes = num_classes
        self.preprocess, self.augment = preprocess, augment
        self.device, self.precision = device, precision
        self.callbacks = list(callbacks or [])
        self.top_k, self.regression, self.grad_clip = top_k, regression, grad_clip
        self.console = console or Console(stderr=False, highlight=False)
        self.scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
        self.scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
        self.stop_training = False
        self.epoch = 0
        self.epochs = 0
        self.global_step = 0
        self.steps_per_epoch = 0
        self.history: list[dict[str, Any]] = []
        self.headline_metrics: list[str] = []  # extra metrics shown in the epoch line (e.g. val_roc_auc)
        self.decision_threshold: float | None = None  # two classes: predict 1 when P(1) >= this (else argmax)
        self._train_metrics: MetricAccumulator | None = None
        self.resume_metrics: dict | None = None  # partial train metrics of the epoch being resumed
        self.micro_batches = 1  # parts each batch is split into after a CUDA out-of-memory (cnnlab.train.faults)
        self.fault_guard = None  # NonFiniteGuard: rolls back after a NaN / Inf (set by the run's checkpointer)
        self.events = None  # EventLog of the run folder
        for cb in self.callbacks:
            cb.set_trainer(self)

    # -- helpers used by callbacks ---------------------------------------------------------------------------
    def log(self, message: str) -> None:
        """One log line (epoch summaries, callback events); --quiet only hides the progress bar."""
        self.console.print(message, markup=False, soft_wrap=True)

    def save_weights(self, path: str | Path) -> None:
        save_weights(self.model, path)

    def base_lrs(self) -> list[float]:
        if self.scheduler is not None:
            return list(self.scheduler.base_lrs)
        return [g["lr"] for g in self.optimizer.param_groups]

    def scale_lr(self, factor: float, min_lr: float = 0.0) -> float:
        """Multiply every group's base learning rate by `factor` (not below `min_lr`); return the new first."""
        new = [max(lr * factor, min_lr) for lr in self.base_lrs()]
        for group, old, lr in zip(self.optimizer.param_groups, self.base_lrs(), new):
            group["lr"] = group["lr"] * (lr / old) if old > 0 else lr
        if self.scheduler is not None:
            self.scheduler.base_lrs = new
        return new[0]

    def running_metrics(self) -> dict[str, float]:
        acc = self._train_metrics
        if acc is None or acc.count == 0:
            return {}
        return {"loss": float(acc.loss_sum) / acc.count,
                "accuracy": float(acc.confusion.view(self.num_classes, -1).diag().sum()) / acc.count}

    def autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    # -- one step --------------------------------------------------------------------------------------------
    def compute_loss(self, output: Any, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss and main logits. A tuple output is (logits, *auxiliary logits), e.g. GoogLeNet's aux heads."""
        if isinstance(output, (tuple, list)):
            logits, aux = output[0], output[1:]
            weight = getattr(self.model, "aux_loss_weight", 0.3)
            loss = self.loss_fn(logits, target) + weight * sum(self.loss_fn(a, target) for a in aux)
            return loss, logits
        return self.loss_fn(output, target), output

    def train_step(self, xb: torch.Tensor, yb: torch.Tensor,
                   check_step: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One update. With `check_step`, a NaN / Inf loss or gradient raises NonFiniteLoss before the update."""
        x = self.preprocess(xb)
        target: torch.Tensor = yb
        if self.augment is not None:
            x, target = self.augment(x, yb)
        self.optimizer.zero_grad(set_to_none=True)
        loss, logits = forward_backward(self, x, target)  # splits the batch on CUDA out-of-memory
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        grad_norm = nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip) if self.grad_clip else None
        if check_step is not None:
            raise_if_nonfinite(self, loss, grad_norm, check_step)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        return loss.detach(), logits.detach(), yb

    # -- fit / evaluate / predict ----------------------------------------------------------------------------
    def fit(self, train: TensorBatches, val: TensorBatches | None, epochs: int, start_epoch: int = 0,
            start_step: int = 0, on_epoch_saved: Callable[[int], None] | None = None) -> list[dict[str, Any]]:
        """Train for `epochs` epochs (from `start_epoch`, `start_step` when resuming); returns the history."""
        if self.optimizer is None:
            raise CnnlabError("this model was loaded for evaluation and prediction (load_run) and has no optimizer: "
                              "to train from its weights, use cnnlab.fit(..., weights='RUN/best.safetensors')")
        self.epochs, self.steps_per_epoch = epochs, len(train)
        self.stop_training = False
        self._train_metrics = MetricAccumulator(self.num_classes, self.device, self.top_k, self.regression)
        logs: dict[str, Any] = {}
        for cb in self.callbacks:
            cb.on_train_begin(logs)
        try:
            for epoch in range(start_epoch, epochs):
                self.epoch = epoch
                first = start_step if epoch == start_epoch else 0
                for cb in self.callbacks:
                    cb.on_epoch_begin(epoch, {"start_step": first})
                logs = self.train_epoch(train, epoch, first)
                if val is not None:
                    logs.update(self.evaluate(val)[0])
                self.history.append(logs)
                for cb in self.callbacks:
                    cb.on_epoch_end(epoch, logs)
                if on_epoch_saved is not None:
                    on_epoch_saved(epoch)
                if self.stop_training:
                    break
        finally:
            for cb in self.callbacks:
                cb.on_train_end(logs)
        return self.history

    def train_epoch(self, train: TensorBatches, epoch: int, start_step: int = 0) -> dict[str, Any]:
        self.model.train()
        acc = self._train_metrics
        acc.reset()
        if start_step and self.resume_metrics is not None:  # the first part of this epoch ran before a resume
            acc.load_state_dict(self.resume_metrics)
        self.resume_metrics = None
        t0 = time.perf_counter()
        while True:
            try:
                self._train_steps(train, epoch, start_step)
                break
            except NonFiniteLoss as e:
                if self.fault_guard is None:
                    raise
                start_step = self.fault_guard.rollback(e)  # last good state of this epoch, lower lr
        logs = acc.compute()
        logs["epoch"] = epoch + 1
        logs["lr"] = self.optimizer.param_groups[0]["lr"]
        logs["time"] = time.perf_counter() - t0
        return logs

    def _train_steps(self, train: TensorBatches, epoch: int, start_step: int) -> None:
        acc = self._train_metrics
        check_every = 1 if self.device.type == "cpu" else 50  # avoid a host sync per step on GPUs
        for step, (xb, yb) in enumerate(train.batches(epoch, start_step), start=start_step):
            loss, logits, target = self.train_step(xb, yb, step if step % check_every == 0 else None)
            acc.update(logits, target, loss)
            self.global_step += 1
            for cb in self.callbacks:
                cb.on_train_batch_end(step, {})
        if acc.count and not math.isfinite(float(acc.loss_sum)):  # GPUs check steps sparsely: catch it here
            raise NonFiniteLoss("loss", float(acc.loss_sum) / acc.count, epoch, len(train) - 1,
                                self.optimizer.param_groups[0]["lr"])

    @torch.no_grad()
    def evaluate(self, data: TensorBatches, prefix: str = "val_") -> tuple[dict[str, float], list[list[int]]]:
        """Metrics with `prefix` and the confusion matrix over all of `data`."""
        self.model.eval()
        acc = MetricAccumulator(self.num_classes, self.device, self.top_k, self.regression)
        binary = self.num_classes == 2
        scores, targets = [], []  # two classes: P(class 1) for ROC AUC / PR AUC
        for xb, yb in data.batches():
            with self.autocast():
                out = self.model(self.preprocess(xb))
                if isinstance(out, (tuple, list)):
                    out = out[0]
                loss = self.loss_fn(out, yb)
            pred = None
            if binary:
                probs = self.probabilities(out)
                scores.append(probs[:, 1])
                targets.append(yb)
                pred = self.decide(probs)
            acc.update(out.float(), yb, loss, pred)
        logs = acc.compute(prefix)
        if binary and scores:
            logs.update(binary_scores(torch.cat(targets), torch.cat(scores), prefix))
        return logs, acc.confusion_matrix()

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
    def predict_proba(self, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """Class probabilities (N, C) for uint8 images (N, C, H, W)."""
        self.model.eval()
        out = []
        for lo in range(0, len(x), batch_size):
            xb = x[lo : lo + batch_size].to(self.device)
            with self.autocast():
                logits = self.model(self.preprocess(xb))
                if isinstance(logits, (tuple, list)):
                    logits = logits[0]
            out.append(self.probabilities(logits).cpu())
        return torch.cat(out) if out else torch.empty(0, self.num_classes)


def is_interactive() -> bool:
    return sys.stdout.isatty()
