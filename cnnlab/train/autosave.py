"""Crash-safe checkpoints of a run: every epoch, every N steps when asked, and on Ctrl-C.

RunCheckpointer is the last callback of a run. It writes the full, self-contained training state
(cnnlab.train.state; `last_state.pt` in a run folder) and the weights (`last.safetensors`, for evaluate / predict),
both atomically, so a crash, SIGKILL or full disk leaves the previous pair intact. The run folder (cnnlab.runs)
gives it those paths. It keeps an in-memory copy of the last good state for NaN rollbacks (cnnlab.train.faults).
The first Ctrl-C asks the loop to stop after the current step, save and raise TrainingInterrupted (exit 130 in the
CLI); a second Ctrl-C aborts at once.
"""

from __future__ import annotations

import contextlib
import copy
import os
import shlex
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnlab.errors import CnnlabError
from cnnlab.train import dist
from cnnlab.train.callbacks import Callback
from cnnlab.train.checkpoint import save_state, save_weights
from cnnlab.train.faults import SIGNAL_AT_ENV, EventLog, NonFiniteGuard, SignalAt
from cnnlab.train.state import capture_state, restore_state

if TYPE_CHECKING:
    from cnnlab.train.trainer import Trainer

class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on Ctrl-C at a step boundary, after saving; the message says how to resume."""


def resume_command(run_dir: str | Path) -> str:
    return f"cnnlab train --resume {shlex.quote(str(run_dir))}"


class RunCheckpointer(Callback):
    """Saves the run's `last` checkpoint at epoch ends, every `every_steps` steps, and on Ctrl-C."""

    def __init__(self, run_dir: str | Path, state_path: str | Path, weights_path: str | Path,
                 every_steps: int | None = None, events: EventLog | None = None, nan_policy: str = "rollback",
                 nan_retries: int = 3, nan_lr_factor: float = 0.5) -> None:
        if every_steps is not None and every_steps < 1:
            raise CnnlabError(f"--checkpoint-every must be a positive number of steps, got {every_steps}")
        self.run_dir, self.state_path, self.weights_path = Path(run_dir), Path(state_path), Path(weights_path)
        self.every_steps = every_steps
        self.events = events or EventLog(None)
        # the Trainer's recovery from NaN / Inf (pass it as Trainer(recovery=...)); its state is saved with the run's
        self.guard = NonFiniteGuard(self, nan_policy, nan_retries, nan_lr_factor, self.events)
        self.snapshot: dict[str, Any] | None = None  # the last good state, in memory (deep copy)
        self.saved_at: tuple[int, int] | None = None  # (epoch, step) of the checkpoint on disk
        self.interrupt_requested = False
        self.signal_at = SignalAt(os.environ.get(SIGNAL_AT_ENV))  # a test's kill point, at a known step

    # -- state ---------------------------------------------------------------------------------------------
    def _extra(self) -> dict[str, Any]:
        return {"faults": self.guard.state_dict()}

    def start(self, state: dict[str, Any] | None = None, epochs: int = 0) -> tuple[int, int]:
        """Restore a loaded state (resume) or take the initial snapshot; returns (epoch, step) to start at
        (`epochs`, the run's total, when the saved run had already stopped, e.g. early)."""
        if state is None:
            self.snapshot = copy.deepcopy(capture_state(self.trainer, 0, 0, self._extra()))
            return 0, 0
        self.snapshot = copy.deepcopy(state)  # before restoring: the optimizer keeps references into `state`
        self.guard.load_state_dict(state.get("faults", {}))
        position = restore_state(self.trainer, state)
        self.saved_at = position
        if state.get("stop_training"):
            return max(position[0], epochs), 0
        return position

    def save(self, epoch: int, step: int) -> None:
        """Write the state at (epoch, step) and the weights; keep a copy in memory for rollbacks."""
        state = capture_state(self.trainer, epoch, step, self._extra())
        error = None
        if self.trainer.is_writer:  # distributed: rank 0 writes, every rank keeps its own copy in memory
            try:
                save_state(state, self.state_path)
                save_weights(self.trainer.model, self.weights_path)
            except CnnlabError as e:
                self.events.write("save_failed", epoch=epoch + 1, step=step, error=str(e))
                error = e
        if dist.any_rank(error is not None):  # every rank stops together
            raise CnnlabError(f"{error or 'rank 0 could not write the checkpoint'}; {self.kept()}") from None
        self.snapshot = copy.deepcopy(state)
        self.saved_at = (epoch, step)

    def kept(self) -> str:
        if self.saved_at is None:
            return f"no checkpoint was saved yet; {resume_command(self.run_dir)} starts the run again"
        epoch, step = self.saved_at
        where = f"end of epoch {epoch}" if step == 0 else f"epoch {epoch + 1}, step {step}"
        return f"the last checkpoint ({where}) is kept; resume with: {resume_command(self.run_dir)}"

    # -- hooks ---------------------------------------------------------------------------------------------
    def on_train_batch_end(self, step: int, logs: dict[str, Any]) -> None:
        trainer: Trainer = self.trainer
        position = (trainer.epoch, step + 1)
        if dist.active():  # a Ctrl-C reaches the ranks at different steps: they stop at the same one
            self.interrupt_requested = dist.any_rank(self.interrupt_requested)
        if self.every_steps and trainer.global_step % self.every_steps == 0:
            self.save(*position)
        self.signal_at.check(trainer.global_step, dist.rank(), self.run_dir)
        if self.interrupt_requested:
            if self.saved_at != position:
                self.save(*position)
            self.stop_interrupted()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        """The `last` checkpoint at the end of every epoch, after every other callback's on_epoch_end."""
        self.save(epoch + 1, 0)
        trainer = self.trainer
        if self.interrupt_requested and epoch + 1 < trainer.epochs and not trainer.stop_training:
            self.stop_interrupted()

    def stop_interrupted(self) -> None:
        epoch, step = self.saved_at
        self.events.write("interrupted", epoch=epoch + 1, step=step)
        raise TrainingInterrupted(f"interrupted; resume with: {resume_command(self.run_dir)} "
                                  f"(saved at epoch {epoch + 1}, step {step})")

    # -- the protected region --------------------------------------------------------------------------------
    def _on_sigint(self, signum: int, frame: Any) -> None:
        if self.interrupt_requested:
            raise TrainingInterrupted(f"aborted; {self.kept()}")
        self.interrupt_requested = True
        print("\ncnnlab: Ctrl-C: stopping after this step and saving a checkpoint (Ctrl-C again aborts now)",
              file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def protect(self) -> Iterator[None]:
        """Around Trainer.fit: Ctrl-C stops at a step boundary; a failing write to the run folder is one line."""
        main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, self._on_sigint) if main else None
        try:
            yield
        except OSError as e:
            raise CnnlabError(f"cannot write to the run folder {self.run_dir} ({e.strerror or e}); "
                              f"{self.kept()}") from None
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
