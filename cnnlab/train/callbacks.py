"""Callbacks with Keras's names and behaviour: ModelCheckpoint, EarlyStopping, ReduceLROnPlateau, CSVLogger,
TensorBoard, plus StopOnTarget ("repeat until the accuracy is good enough") and the progress display.

A callback sees the Trainer (`self.trainer`), gets a `logs` dict at each hook (on_train_batch_end: the step's
`loss`, a 0-d tensor on the device, and `lr`; on_epoch_end: the epoch's metrics), and stops training by setting
`trainer.stop_training = True`. Callbacks that carry state across epochs (best value, patience counters) expose
state_dict / load_state_dict so a resumed run continues exactly. The callbacks a config asks for are built by
the factories at the end of this module (`from_config`). In a distributed run every rank runs every callback
on the same reduced metrics, so they decide alike; only `trainer.is_writer` (rank 0) writes files.
"""

from __future__ import annotations

import csv
import math
import sys
import time
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnlab.errors import CnnlabError

if TYPE_CHECKING:
    from cnnlab.config import Config
    from cnnlab.train.trainer import Trainer


class Callback:
    """No-op hooks; subclasses override what they need."""

    trainer: Trainer

    def set_trainer(self, trainer: Trainer) -> None:
        self.trainer = trainer

    def on_train_begin(self, logs: dict[str, Any]) -> None: ...

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any]) -> None: ...

    def on_train_batch_end(self, step: int, logs: dict[str, Any]) -> None: ...

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None: ...

    def on_train_end(self, logs: dict[str, Any]) -> None: ...

    state_keys: tuple[str, ...] = ()  # the attributes that carry over epochs (saved with every checkpoint)

    def state_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.state_keys}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k in self.state_keys:
            if k in state:
                setattr(self, k, state[k])


def resolve_mode(monitor: str, mode: str) -> str:
    if mode in ("min", "max"):
        return mode
    if mode != "auto":
        raise CnnlabError(f"mode must be auto, min or max, got '{mode}'")
    return "min" if any(k in monitor for k in ("loss", "mse", "mae", "error")) else "max"


class _Monitor(Callback):
    """Shared logic: watch `monitor` in the epoch logs and tell whether it improved by `min_delta`."""

    state_keys = ("best",)

    def __init__(self, monitor: str, mode: str = "auto", min_delta: float = 0.0) -> None:
        self.monitor = monitor
        self.mode = resolve_mode(monitor, mode)
        self.min_delta = abs(min_delta)
        self.best = math.inf if self.mode == "min" else -math.inf

    def current(self, logs: dict[str, Any]) -> float | None:
        value = logs.get(self.monitor)
        if value is None:
            return None
        return float(value)

    def improved(self, value: float) -> bool:
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta



class ModelCheckpoint(_Monitor):
    """Save the weights whenever `monitor` improves (save_best_only) or every epoch."""

    state_keys = ("best", "best_epoch")

    def __init__(self, filepath: str | Path, monitor: str = "val_loss", mode: str = "auto",
                 save_best_only: bool = True, min_delta: float = 0.0) -> None:
        super().__init__(monitor, mode, min_delta)
        self.filepath = Path(filepath)
        self.save_best_only = save_best_only
        self.best_epoch: int | None = None

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        value = self.current(logs)
        if not self.save_best_only:
            self.trainer.save_weights(self.filepath)
            return
        if value is not None and not math.isnan(value) and self.improved(value):
            self.best, self.best_epoch = value, epoch
            self.trainer.save_weights(self.filepath)



class EarlyStopping(_Monitor):
    """Stop when `monitor` has not improved for `patience` epochs; optionally restore the best weights."""

    state_keys = ("best", "wait", "best_epoch", "best_weights", "stopped_epoch")

    def __init__(self, monitor: str = "val_loss", patience: int = 0, min_delta: float = 0.0, mode: str = "auto",
                 restore_best_weights: bool = False, baseline: float | None = None,
                 start_from_epoch: int = 0) -> None:
        super().__init__(monitor, mode, min_delta)
        self.patience = patience
        self.restore_best_weights = restore_best_weights
        self.baseline = baseline
        self.start_from_epoch = start_from_epoch
        self.wait = 0
        self.stopped_epoch: int | None = None
        self.best_epoch: int | None = None
        self.best_weights: dict | None = None
        if baseline is not None:
            self.best = baseline

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        value = self.current(logs)
        if value is None or epoch < self.start_from_epoch:
            return
        if self.improved(value):
            self.best, self.best_epoch, self.wait = value, epoch, 0
            if self.restore_best_weights:
                self.best_weights = {k: v.detach().clone() for k, v in self.trainer.model.state_dict().items()}
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
            self.trainer.stop_training = True
            self.trainer.log(f"EarlyStopping: {self.monitor} has not improved for {self.wait} epochs "
                             f"(best {self.best:.4f} at epoch {(self.best_epoch or 0) + 1}); stopping")

    def on_train_end(self, logs: dict[str, Any]) -> None:
        if self.restore_best_weights and self.best_weights is not None and self.stopped_epoch is not None:
            self.trainer.model.load_state_dict(self.best_weights)
            self.trainer.log(f"EarlyStopping: restored the weights of epoch {(self.best_epoch or 0) + 1}")



class ReduceLROnPlateau(_Monitor):
    """Multiply the learning rate by `factor` when `monitor` has stalled for `patience` epochs.

    Scales the base rates under the step schedule, so it composes with warmup / cosine / one-cycle.
    """

    state_keys = ("best", "wait", "cooldown_counter")

    def __init__(self, monitor: str = "val_loss", factor: float = 0.1, patience: int = 10, mode: str = "auto",
                 min_delta: float = 1e-4, cooldown: int = 0, min_lr: float = 0.0) -> None:
        super().__init__(monitor, mode, min_delta)
        if not 0 < factor < 1:
            raise CnnlabError(f"ReduceLROnPlateau factor must be between 0 and 1, got {factor}")
        self.factor, self.patience, self.cooldown, self.min_lr = factor, patience, cooldown, min_lr
        self.wait = 0
        self.cooldown_counter = 0

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        value = self.current(logs)
        if value is None:
            return
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        if self.improved(value):
            self.best, self.wait = value, 0
            return
        if self.cooldown_counter > 0:
            return
        self.wait += 1
        if self.wait >= self.patience:
            old = self.trainer.base_lrs()[0]
            new = self.trainer.scale_lr(self.factor, self.min_lr)
            if new < old:
                self.trainer.log(f"ReduceLROnPlateau: {self.monitor} stalled for {self.wait} epochs; "
                                 f"learning rate {old:.3g} -> {new:.3g}")
            self.cooldown_counter, self.wait = self.cooldown, 0



class StopOnTarget(Callback):
    """Stop as soon as `monitor` reaches `target`: the notes' "repeat until the accuracy is good enough"."""

    def __init__(self, target: float, monitor: str = "val_accuracy", mode: str = "auto") -> None:
        self.target, self.monitor = target, monitor
        self.mode = resolve_mode(monitor, mode)
        self.reached_epoch: int | None = None

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        value = logs.get(self.monitor)
        if value is None:
            return
        if (value >= self.target) if self.mode == "max" else (value <= self.target):
            self.reached_epoch = epoch
            self.trainer.stop_training = True
            self.trainer.log(f"StopOnTarget: {self.monitor} = {value:.4f} reached the target {self.target}; stopping")


class CSVLogger(Callback):
    """One row of epoch logs per epoch (Keras's CSVLogger); append=True continues a resumed run's file."""

    def __init__(self, filename: str | Path, separator: str = ",", append: bool = False) -> None:
        self.filename, self.separator, self.append = Path(filename), separator, append
        self.keys: list[str] | None = None

    def on_train_begin(self, logs: dict[str, Any]) -> None:
        if not self.trainer.is_writer:  # distributed: only rank 0 writes
            return
        if self.append and self.filename.exists():
            with open(self.filename, newline="") as f:
                header = next(csv.reader(f, delimiter=self.separator), None)
            self.keys = header[1:] if header else None
        elif self.filename.exists():
            self.filename.unlink()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        if not self.trainer.is_writer:  # distributed: only rank 0 writes
            return
        if self.keys is None:
            self.keys = sorted(k for k, v in logs.items() if isinstance(v, (int, float)) and k != "epoch")
        new = not self.filename.exists()
        with open(self.filename, "a", newline="") as f:
            writer = csv.writer(f, delimiter=self.separator)
            if new:
                writer.writerow(["epoch", *self.keys])
            writer.writerow([epoch + 1, *(_fmt(logs.get(k, "")) for k in self.keys)])


def _fmt(v: Any) -> Any:
    return f"{v:.6g}" if isinstance(v, float) else v


class TensorBoard(Callback):
    """Epoch scalars (every metric and the learning rate) as TensorBoard events in `log_dir`."""

    def __init__(self, log_dir: str | Path, purge_step: int | None = None) -> None:
        self.log_dir = Path(log_dir)
        self.purge_step = purge_step  # drop events from this epoch on (default: after the restored history)
        self.writer = None

    def on_train_begin(self, logs: dict[str, Any]) -> None:
        if not self.trainer.is_writer:  # distributed: only rank 0 writes
            return
        if self.purge_step is None and self.trainer.history:  # resumed: epochs after the checkpoint are logged again
            self.purge_step = len(self.trainer.history) + 1
        # TensorBoard's own switch to its TF stub: writing scalars needs no TensorFlow, and importing it
        # (when installed) costs seconds and floods the log.
        sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(self.log_dir), purge_step=self.purge_step)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        if self.writer is None:
            return
        for key, value in logs.items():
            if isinstance(value, (int, float)) and key != "epoch":
                split = "val" if key.startswith("val_") else "train"
                name = key[4:] if split == "val" else key
                self.writer.add_scalar(f"{name}/{split}" if name not in ("lr", "time") else name, value, epoch + 1)
        self.writer.flush()

    def on_train_end(self, logs: dict[str, Any]) -> None:
        if self.writer is not None:
            self.writer.close()


class ProgressBar(Callback):
    """A rich progress bar per epoch with live loss / accuracy and ETA, then one Keras-like line per epoch."""

    def __init__(self, quiet: bool = False, refresh_seconds: float = 0.2) -> None:
        self.quiet = quiet
        self.refresh = refresh_seconds
        self.progress = None
        self.task = None
        self._last = 0.0

    def on_train_begin(self, logs: dict[str, Any]) -> None:
        if self.quiet:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"), TimeRemainingColumn(), transient=True,
            console=self.trainer.console,
        )
        self.progress.start()

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any]) -> None:
        if self.progress is not None:
            self.task = self.progress.add_task("", total=self.trainer.steps_per_epoch,
                                               epoch=f"{epoch + 1}/{self.trainer.epochs}", stats="")
            self.progress.update(self.task, completed=logs.get("start_step", 0))

    def on_train_batch_end(self, step: int, logs: dict[str, Any]) -> None:
        if self.progress is None:
            return
        now = time.monotonic()
        if now - self._last < self.refresh and step + 1 < self.trainer.steps_per_epoch:
            return
        self._last = now
        stats = "  ".join(f"{k} {v:.4f}" for k, v in self.trainer.running_metrics().items())
        self.progress.update(self.task, completed=step + 1, stats=stats)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        if self.progress is not None and self.task is not None:
            self.progress.remove_task(self.task)
        parts = [f"{k} {logs[k]:.4f}" for k in self.trainer.headline_metrics if k in logs]
        line = (f"Epoch {epoch + 1}/{self.trainer.epochs}  {logs.get('time', 0):.1f}s  "
                + "  ".join(parts) + f"  lr {logs.get('lr', 0):.2g}")
        self.trainer.log(line)

    def on_train_end(self, logs: dict[str, Any]) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


# ------------------------------------------------------------------------------------------------------------
# the callbacks a run's config asks for: one factory per callback, in a fixed order (their states are saved in
# that order, so a new factory goes at the end). A new built-in callback with a flag is its class and factory
# here plus its option line in cnnlab/config/schema.py.


@dataclass(frozen=True)
class RunContext:
    """What a factory may use: the resolved config, the monitored metric, and the run folder (cnnlab.runs.RunDir)."""

    cfg: Config
    monitor: str
    has_val: bool
    resuming: bool
    run: Any  # RunDir: paths as run.file(run.BEST)


CONFIG_CALLBACKS: list[Callable[[RunContext], Callback | None]] = []


def from_config(factory: Callable[[RunContext], Callback | None]) -> Callable[[RunContext], Callback | None]:
    """Register a factory that builds a callback from the config (or returns None when the config does not ask)."""
    CONFIG_CALLBACKS.append(factory)
    return factory


def build_callbacks(ctx: RunContext) -> list[Callback]:
    """The callbacks the config asks for, in registration order."""
    return [cb for factory in CONFIG_CALLBACKS if (cb := factory(ctx)) is not None]


@from_config
def progress_bar(ctx: RunContext) -> Callback:
    return ProgressBar(quiet=ctx.cfg.verbose != 1)


@from_config
def model_checkpoint(ctx: RunContext) -> Callback | None:
    return ModelCheckpoint(ctx.run.file(ctx.run.BEST), monitor=ctx.monitor) if ctx.cfg.callbacks.checkpoint else None


@from_config
def early_stopping(ctx: RunContext) -> Callback | None:
    c = ctx.cfg.callbacks
    return (EarlyStopping(monitor=ctx.monitor, patience=c.early_stopping, restore_best_weights=c.restore_best)
            if c.early_stopping is not None else None)


@from_config
def reduce_lr_on_plateau(ctx: RunContext) -> Callback | None:
    c = ctx.cfg.callbacks
    return (ReduceLROnPlateau(monitor=ctx.monitor, factor=c.reduce_lr_factor, patience=c.reduce_lr, min_lr=c.min_lr)
            if c.reduce_lr is not None else None)


@from_config
def stop_on_target(ctx: RunContext) -> Callback | None:
    target = ctx.cfg.callbacks.target
    return StopOnTarget(target, monitor=ctx.monitor) if target is not None else None


@from_config
def csv_logger(ctx: RunContext) -> Callback | None:
    return CSVLogger(ctx.run.file(ctx.run.METRICS_CSV), append=ctx.resuming) if ctx.cfg.callbacks.csv else None


@from_config
def tensorboard(ctx: RunContext) -> Callback | None:
    return TensorBoard(ctx.run.file(ctx.run.TENSORBOARD)) if ctx.cfg.callbacks.tensorboard else None
