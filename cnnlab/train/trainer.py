"""The training loop: preprocess -> augment -> forward -> loss -> backward -> clip -> step, callbacks inline.

One Trainer runs `fit` (epochs of `train_step`) and evaluates through its Predictor. Everything random in an epoch
derives from (seed, epoch), so a run resumed from its last checkpoint replays the same batches.

What hooks in, and how:
- callbacks (cnnlab.train.callbacks.Callback): on_train_begin, on_epoch_begin, on_train_batch_end (logs: loss, lr),
  on_epoch_end (the epoch's metrics), on_train_end; a callback stops training with `trainer.stop_training = True`.
  Checkpointing is a callback (cnnlab.train.autosave.RunCheckpointer, always the last one).
- `recovery` (cnnlab.train.faults.Recovery): a NaN / Inf loss or gradient raises NonFiniteLoss before the update;
  the recovery restores a good state and says where to continue, or raises.
- CUDA out-of-memory: `forward_backward` splits the batch into 2, 4, ... parts and accumulates their gradients.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import nn

from cnnlab.data.loader import TensorBatches
from cnnlab.errors import CnnlabError
from cnnlab.train import dist
from cnnlab.train.callbacks import Callback
from cnnlab.train.checkpoint import save_weights
from cnnlab.train.faults import (
    EventLog,
    NonFiniteLoss,
    Recovery,
    check_finite,
    cpu_oom_error,
    is_cpu_oom,
    oom_split_message,
    split_parts,
)
from cnnlab.train.predictor import Predictor, autocast


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
    """Holds the model (through its Predictor), optimizer, schedule and callbacks of one run, and runs its epochs.

    The task (`predictor.task`, cnnlab.tasks) owns what the batches mean: the forward pass and its loss, the
    metrics and the epoch line. `train_model`: the module the training forward runs through (a
    DistributedDataParallel wrapper of the model; default the model itself). `recovery`: what a NaN / Inf does
    (its `events` log the run's faults); `augment`: a batch hook (x, y) -> (x, targets), e.g. mixup."""

    def __init__(self, predictor: Predictor, optimizer: torch.optim.Optimizer, *,
                 scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
                 callbacks: list[Callback] | None = None, augment: Callable[[Any, Any], tuple] | None = None,
                 grad_clip: float | None = None, recovery: Recovery | None = None, console: Console | None = None,
                 train_model: nn.Module | None = None) -> None:
        self.predictor, self.optimizer, self.scheduler = predictor, optimizer, scheduler
        self.model, self.task = predictor.model, predictor.task
        self.preprocess, self.device, self.precision = predictor.preprocess, predictor.device, predictor.precision
        self.train_model = train_model if train_model is not None else self.model
        self.is_writer = dist.is_writer()  # rank 0 (or the only process) writes files
        self.augment, self.grad_clip = augment, grad_clip
        self.callbacks = list(callbacks or [])
        self.console = console or Console(stderr=False, highlight=False)
        self.recovery = recovery
        self.events = getattr(recovery, "events", None) or EventLog(None)
        self.headline_metrics: list[str] = self.task.headline(False)  # the epoch line's metrics, in order
        self.scaler = torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None
        self.stop_training = False
        self.epoch = self.epochs = self.global_step = self.steps_per_epoch = 0
        self.history: list[dict[str, Any]] = []
        self.train_metrics = self.task.metrics(self.device)
        self.resume_metrics: dict | None = None  # partial train metrics of the epoch being resumed
        self.micro_batches = 1  # parts each batch is split into after a CUDA out-of-memory
        for cb in self.callbacks:
            cb.set_trainer(self)

    # -- helpers used by callbacks ---------------------------------------------------------------------------
    def log(self, message: str) -> None:
        """One log line (epoch summaries, callback events); --quiet only hides the progress bar."""
        self.console.print(message, markup=False, soft_wrap=True)

    def save_weights(self, path: str | Path) -> None:
        if self.is_writer:
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
        """The epoch's metrics so far, short names for the progress bar (a classifier: loss, acc)."""
        return self.train_metrics.running()

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    # -- one step --------------------------------------------------------------------------------------------
    def train_step(self, xb: Any, yb: Any, check_step: int | None = None) -> tuple[torch.Tensor, Any, Any]:
        """One update of a batch: (loss, the task's outputs, the batch's targets). With `check_step`, a NaN / Inf
        loss or gradient raises NonFiniteLoss before the update."""
        x = self.preprocess(xb)  # uint8 (B, C, H, W) -> normalised float on the device
        target = yb
        if self.augment is not None:
            x, target = self.augment(x, yb)  # mixup / cutmix: soft targets
        self.optimizer.zero_grad(set_to_none=True)
        loss, outputs = self.forward_backward(x, target)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        grad_norm = nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip) if self.grad_clip else None
        if check_step is not None:  # distributed: every rank decides alike (the gradients are already averaged)
            params = [p for p in self.model.parameters() if p.requires_grad] if self.scaler is None else None
            check_finite(loss, grad_norm, params, self.epoch, check_step, self.lr, agree=dist.any_rank)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        return loss.detach(), detached(outputs), yb

    def forward_backward(self, x: Any, target: Any) -> tuple[torch.Tensor, Any]:
        """Loss and outputs of the batch with its gradients accumulated; on CUDA out-of-memory the batch is split
        into 2, 4, ... parts (`micro_batches`, kept for the rest of the run), so the update stays the full batch's."""
        while True:
            try:
                return self._forward_backward_parts(x, target, self.micro_batches)
            except torch.cuda.OutOfMemoryError:
                pass  # leave the except block first so the failed attempt's tensors are freed
            except (RuntimeError, MemoryError) as e:
                if is_cpu_oom(e):
                    raise cpu_oom_error(len(x), tuple(getattr(x, "shape", ())[1:])) from None
                raise
            self.optimizer.zero_grad(set_to_none=True)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            self.micro_batches = split_parts(self.micro_batches, len(x))
            self.events.write("oom_split", batch=len(x), parts=self.micro_batches)
            self.log(oom_split_message(len(x), self.micro_batches))

    def _forward_backward_parts(self, x: Any, target: Any, parts: int) -> tuple[torch.Tensor, Any]:
        # distributed: DDP averages the ranks' gradients; a rank's part of the global batch weighs by its size
        weight = self._rank_weight(len(x)) if dist.active() else None
        if parts == 1:
            with autocast(self.device, self.precision):
                loss, outputs = self.task.forward_loss(self.train_model, x, target)
            scaled = loss if weight is None else loss * weight
            (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            return loss, outputs
        n = len(x)
        size = math.ceil(n / parts)
        losses, all_outputs = [], []
        for lo in range(0, n, size):
            xc, tc = x[lo : lo + size], target[lo : lo + size]
            last = lo + size >= n
            with self._sync(last):
                with autocast(self.device, self.precision):
                    loss, outputs = self.task.forward_loss(self.train_model, xc, tc)
                share = len(xc) / n * (weight or 1.0)  # each part's mean loss by its share: the batch's gradient
                (self.scaler.scale(loss * share) if self.scaler is not None else loss * share).backward()
            losses.append(loss.detach().float() * len(xc) / n)
            all_outputs.append(detached(outputs))
        return torch.stack(losses).sum(), self.task.merge_outputs(all_outputs)

    def _rank_weight(self, n_local: int) -> float:
        """world * n_local / n_global: with it DDP's mean over ranks is the mean over the whole global batch."""
        n_global = int(dist.all_reduce_sum(torch.tensor([n_local], dtype=torch.int64)).item())
        return dist.world_size() * n_local / n_global

    def _sync(self, last: bool):
        """DDP: all-reduce the gradients only after the last part of a split batch."""
        no_sync = getattr(self.train_model, "no_sync", None)
        return contextlib.nullcontext() if last or no_sync is None else no_sync()

    # -- epochs ----------------------------------------------------------------------------------------------
    def fit(self, train: TensorBatches, val: TensorBatches | None, epochs: int, start_epoch: int = 0,
            start_step: int = 0) -> list[dict[str, Any]]:
        """Train for `epochs` epochs (from `start_epoch`, `start_step` when resuming); returns the history."""
        self.epochs, self.steps_per_epoch = epochs, len(train)
        self.headline_metrics = self.task.headline(val is not None)
        self.stop_training = False
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
                if self.stop_training:
                    break
        finally:
            for cb in self.callbacks:
                cb.on_train_end(logs)
        return self.history

    def train_epoch(self, train: TensorBatches, epoch: int, start_step: int = 0) -> dict[str, Any]:
        self.model.train()
        self._reset_epoch_metrics(start_step)
        t0 = time.perf_counter()
        while True:
            try:
                self._train_steps(train, epoch, start_step)
                break
            except NonFiniteLoss as e:
                if self.recovery is None:
                    raise
                start_step = self.recovery.recover(e)  # the last good state of this epoch, a lower lr
                self._reset_epoch_metrics(start_step)
        logs = self.train_metrics.all_reduce().compute()  # over every rank's part of the epoch
        logs["epoch"] = epoch + 1
        logs["lr"] = self.lr
        logs["time"] = time.perf_counter() - t0
        return logs

    def _reset_epoch_metrics(self, start_step: int) -> None:
        """Zero the epoch's train metrics, or continue those saved with a state that resumes mid-epoch (saved summed
        over the ranks: rank 0 continues them, the others start at zero)."""
        self.train_metrics.reset()
        if start_step and self.resume_metrics is not None and dist.rank() == 0:
            self.train_metrics.load_state_dict(self.resume_metrics)
        self.resume_metrics = None

    def _train_steps(self, train: TensorBatches, epoch: int, start_step: int) -> None:
        metrics = self.train_metrics
        check_every = 1 if self.device.type == "cpu" else 50  # avoid a host sync per step on GPUs
        for step, (xb, yb) in enumerate(train.batches(epoch, start_step), start=start_step):
            loss, outputs, target = self.train_step(xb, yb, step if step % check_every == 0 else None)
            metrics.update(outputs, target, loss)
            self.global_step += 1
            logs = {"loss": loss, "lr": self.lr}  # loss: a 0-d tensor on the device (float() it: a sync on GPUs)
            for cb in self.callbacks:
                cb.on_train_batch_end(step, logs)
        bad = not metrics.loss_is_finite()  # GPUs check steps sparsely: catch it here
        if dist.any_rank(bad):  # agreed, so every rank recovers (their collectives stay in step)
            raise NonFiniteLoss("loss", metrics.loss.value(metrics.count), epoch, len(train) - 1, self.lr)

    def evaluate(self, data: Any, prefix: str = "val_") -> tuple[dict[str, float], dict[str, Any]]:
        """The task's metrics with `prefix` and its artefacts (a classifier: the confusion matrix) over `data`."""
        return self.predictor.evaluate(data, prefix)


def detached(outputs: Any) -> Any:
    """Outputs without their autograd graph: tensors detached inside tuples, lists and dicts."""
    if isinstance(outputs, torch.Tensor):
        return outputs.detach()
    if isinstance(outputs, (list, tuple)):
        return type(outputs)(detached(o) for o in outputs)
    if isinstance(outputs, dict):
        return {k: detached(v) for k, v in outputs.items()}
    return outputs
