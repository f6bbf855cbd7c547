"""Numerical and memory faults of a training step, the recovery from them, and the run's event log.

- A NaN / Inf loss or gradient is caught before optimizer.step (every step on the CPU, every 50 on GPUs, where
  a check costs a host sync): the Trainer raises NonFiniteLoss and hands it to its `recovery`. NonFiniteGuard is
  that recovery. Policy `rollback` (default): put back the last good state (kept in memory by the
  RunCheckpointer), multiply the learning rate by `lr_factor`, and continue, at most `retries` times; then stop
  with advice. Policy `stop`: stop with advice at once.
- CUDA out-of-memory: the Trainer splits the batch into 2, 4, ... parts whose gradients are accumulated
  (Trainer.forward_backward); `oom_split` is logged here.
- Running out of CPU memory: a CnnlabError about the memory budget instead of a traceback (`cpu_oom_error`).
Every event is appended to events.jsonl in the run folder. `SignalAt` injects a crash at a known step (tests).
"""

from __future__ import annotations

import copy
import json
import math
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.train.state import restore_state

if TYPE_CHECKING:
    from cnnlab.train.autosave import RunCheckpointer

NAN_POLICIES = ("rollback", "stop")


class Recovery(Protocol):
    """What a Trainer hands a NonFiniteLoss to (its `recovery`): restore a good state, or raise."""

    def recover(self, error: NonFiniteLoss) -> int:
        """Restore the last good state of the current epoch; return the step of the epoch to continue from."""


class EventLog:
    """Appends one JSON object per line to `<run>/events.jsonl` (faults, rollbacks, resumes, interrupts)."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path is not None else None

    def write(self, event: str, **fields: Any) -> None:
        if self.path is None:
            return
        record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "event": event, **fields}
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record, default=str) + "\n")
        except OSError:
            pass  # the log is a record, never a reason to lose the run

    def read(self) -> list[dict[str, Any]]:
        """Every event written; a line cut short by a kill (the last one) is left out."""
        if self.path is None or not self.path.is_file():
            return []
        events = []
        for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                events.append(event)
        return events


class NonFiniteLoss(CnnlabError):
    """The loss or the gradients of a step are NaN or Inf (raised before the optimizer step)."""

    def __init__(self, what: str, value: float, epoch: int, step: int, lr: float) -> None:
        self.what, self.value, self.epoch, self.step, self.lr = what, value, epoch, step, lr
        super().__init__(f"the {what} became {value} at epoch {epoch + 1}, step {step + 1} (learning rate "
                         f"{lr:.3g}): {ADVICE}")


ADVICE = ("the learning rate may be too high (lower --lr), the data may hold bad values (run cnnlab inspect), or "
          "fp16 overflowed (use --precision bf16 or fp32)")


def total_grad_norm(params: list[nn.Parameter]) -> torch.Tensor | None:
    """The 2-norm of all gradients (one value; NaN / Inf when any gradient is)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return None
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)).float())


def check_finite(loss: torch.Tensor, grad_norm: torch.Tensor | None, params: list[nn.Parameter] | None,
                 epoch: int, step: int, lr: float, agree: Callable[[bool], bool] = bool) -> None:
    """One host sync: raise NonFiniteLoss when the loss or the gradient norm is NaN / Inf.

    `params`: where to take the gradient norm from when `grad_norm` is None; None skips the gradient check (with
    fp16 the GradScaler itself skips steps with overflowed gradients). `agree`: how the verdict becomes one for
    every rank of a distributed run (any rank's NaN stops them all at the same step).
    """
    bad = ~torch.isfinite(loss.detach())
    if params is not None:
        if grad_norm is None:
            grad_norm = total_grad_norm(params)
        if grad_norm is not None:
            bad = bad | ~torch.isfinite(grad_norm)
    if agree(bool(bad)):
        finite_loss = bool(torch.isfinite(loss.detach()))
        what, value = ("gradient norm", float(grad_norm.detach())) if finite_loss else ("loss", float(loss.detach()))
        raise NonFiniteLoss(what, value, epoch, step, lr)


class NonFiniteGuard:
    """Rolls a run back to its last good state after a NaN / Inf, with a lower learning rate, a bounded number
    of times."""

    def __init__(self, checkpointer: RunCheckpointer, policy: str = "rollback", retries: int = 3,
                 lr_factor: float = 0.5, events: EventLog | None = None) -> None:
        if policy not in NAN_POLICIES:
            raise CnnlabError(f"unknown train.nan_policy '{policy}': use {' or '.join(NAN_POLICIES)}")
        if not 0 < lr_factor < 1:
            raise CnnlabError(f"train.nan_lr_factor must be between 0 and 1, got {lr_factor}")
        self.checkpointer, self.policy, self.retries, self.lr_factor = checkpointer, policy, retries, lr_factor
        self.events = events or EventLog(None)
        self.count = 0  # events so far in this run (saved in checkpoints, survives a resume)
        self.lr_scale = 1.0  # product of the reductions so far

    def recover(self, error: NonFiniteLoss) -> int:
        """Restore the last good state of the current epoch and lower the learning rate; returns the step to
        continue from. Raises CnnlabError with advice once the retries are used up."""
        trainer = self.checkpointer.trainer
        self.count += 1
        snapshot = self.checkpointer.snapshot
        fields = {"what": error.what, "value": error.value, "epoch": error.epoch + 1, "step": error.step + 1,
                  "lr": error.lr, "count": self.count}
        if self.policy == "stop" or self.count > self.retries or snapshot is None:
            self.events.write("nonfinite_stop", **fields)
            tried = f" after {self.count - 1} rollbacks with a lower learning rate" if self.count > 1 else ""
            raise CnnlabError(f"the {error.what} became {error.value} at epoch {error.epoch + 1}, step "
                              f"{error.step + 1}{tried}: {ADVICE}. Events are in {self.events.path}") from None
        if int(snapshot["epoch"]) != error.epoch:
            raise CnnlabError(f"internal: the last good state is from epoch {snapshot['epoch'] + 1}, not "
                              f"{error.epoch + 1}") from None
        _, step = restore_state(trainer, copy.deepcopy(snapshot))
        self.lr_scale *= self.lr_factor
        old = trainer.base_lrs()[0]
        new = trainer.scale_lr(self.lr_scale / snapshot.get("faults", {}).get("lr_scale", 1.0))
        self.events.write("nonfinite_rollback", **fields, rollback_to={"epoch": error.epoch + 1, "step": step},
                          lr_before=old, lr_after=new)
        trainer.log(f"warning: the {error.what} became {error.value} at epoch {error.epoch + 1}, step "
                    f"{error.step + 1}; rolled back to step {step} of the epoch, learning rate {old:.3g} -> "
                    f"{new:.3g} (retry {self.count} of {self.retries})")
        return step

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count, "lr_scale": self.lr_scale}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.count, self.lr_scale = int(state.get("count", 0)), float(state.get("lr_scale", 1.0))


# ------------------------------------------------------------------------------------------------------------
# memory


def is_cpu_oom(error: BaseException) -> bool:
    if isinstance(error, MemoryError):
        return True
    text = str(error).lower()
    return "can't allocate memory" in text or "not enough memory" in text or "failed to allocate" in text


def cpu_oom_error(batch: int, shape: tuple[int, ...]) -> CnnlabError:
    return CnnlabError(f"out of memory in a training step at batch size {batch} ({shape} images): lower "
                       "--batch-size or --image-size, use a smaller model, or lower --set data.memory_budget_mb so "
                       "less data is held in memory")


def split_parts(parts: int, batch: int) -> int:
    """The next number of parts after a CUDA out-of-memory, or an error when a part would be under one image."""
    if parts * 2 > batch:
        raise CnnlabError(f"out of GPU memory even with one image per forward pass (batch {batch}): use a smaller "
                          "--image-size or model, or --precision bf16")
    return parts * 2


def oom_split_message(batch: int, parts: int) -> str:
    return (f"warning: CUDA out of memory at batch size {batch}: splitting each batch into {parts} parts of "
            f"{math.ceil(batch / parts)} (gradient accumulation keeps the effective batch of {batch})")


# ------------------------------------------------------------------------------------------------------------
# deterministic fault injection (crash-safety tests)

SIGNAL_AT_ENV = "CNNLAB_SIGNAL_AT"


class SignalAt:
    """`CNNLAB_SIGNAL_AT=step=N[,signal=KILL|INT|TERM][,rank=R][,run=TEXT]`: the process sends itself the signal
    right after global step N (its callbacks and any checkpoint of that step done), in rank R only and in a run
    folder whose path contains TEXT only, when given. Tests kill or interrupt a run at a known step this way,
    instead of racing a poll against a clock; users never set it."""

    def __init__(self, spec: str | None) -> None:
        self.step: int | None = None
        if not spec:
            return
        try:
            fields = dict(item.split("=", 1) for item in spec.split(","))
            self.step = int(fields["step"])
            self.signal = getattr(signal, "SIG" + fields.get("signal", "KILL").upper())
            self.rank = int(fields["rank"]) if "rank" in fields else None
            self.run = fields.get("run")
        except (KeyError, ValueError, AttributeError):
            raise CnnlabError(f"{SIGNAL_AT_ENV}={spec!r}: expected step=N[,signal=KILL|INT|TERM][,rank=R]"
                              "[,run=TEXT]") from None

    def check(self, global_step: int, rank: int, run_dir: str | Path) -> None:
        """Send the signal when this is the step (and rank, and run folder)."""
        if self.step is None or global_step != self.step or (self.rank is not None and rank != self.rank):
            return
        if self.run is not None and self.run not in str(run_dir):
            return
        os.kill(os.getpid(), self.signal)

