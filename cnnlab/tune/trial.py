"""One trial of `cnnlab tune`: its config (the base config plus the trial's values), a normal run folder
DIR/trials/NNNN trained by the one training path (`api.fit`, or `api.resume` for a trial whose worker died), and
its outcome told to the study: the run's monitor on val, pruned, or failed with its reason.

A trial killed before its run folder had a config.yaml leaves at most a partial folder; it is moved aside to
`NNNN.killed-K` (tune's own folders: nothing of the user's is touched) and the trial starts again under its number.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import Trial, TrialState

from cnnlab.config import Config
from cnnlab.runs import RunDir
from cnnlab.train.callbacks import Callback
from cnnlab.train.faults import EventLog
from cnnlab.tune.space import Param, trial_config
from cnnlab.tune.study import Heartbeat

TRIALS = "trials"


def trial_dir(out: Path, number: int) -> Path:
    return out / TRIALS / f"{number:04d}"


def suggest(trial: Trial, params: list[Param]) -> dict[str, Any]:
    """The trial's value of every key (a resumed trial gets back the values it had)."""
    out: dict[str, Any] = {}
    for p in params:
        if p.kind in ("choice", "grid"):
            out[p.key] = trial.suggest_categorical(p.key, list(p.values))
        elif p.kind == "int":
            out[p.key] = trial.suggest_int(p.key, p.low, p.high, step=p.step or 1, log=p.log)
        else:
            out[p.key] = trial.suggest_float(p.key, p.low, p.high, log=p.log)
    return out


class ReportToTrial(Callback):
    """Per-epoch reports of the run's monitored metric to the trial; stops the run when the pruner says so."""

    def __init__(self, trial: Trial, run: Path) -> None:
        self.trial, self.run = trial, run
        self.monitor: str | None = None
        self.pruned_at: int | None = None

    def on_train_begin(self, logs: dict[str, Any]) -> None:  # the resolved monitor, as written to config.yaml
        self.monitor = (RunDir(self.run).read_raw_config().get("callbacks") or {}).get("monitor")

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        value = logs.get(self.monitor) if self.monitor else None
        if value is None or not math.isfinite(float(value)):
            return
        self.trial.report(float(value), epoch)
        if epoch + 1 < self.trainer.epochs and self.trial.should_prune():  # the last epoch: nothing left to save
            self.pruned_at = epoch
            self.trainer.stop_training = True
            self.trainer.log(f"pruned at epoch {epoch + 1}: {self.monitor} {value:.4f}")
            # in the run folder too: a worker that dies before telling the study leaves a finished run, and the
            # one that resumes the trial must tell it PRUNED, not COMPLETE with a value of fewer epochs
            EventLog(RunDir(self.run).file(RunDir.EVENTS)).write("pruned", epoch=epoch + 1, monitor=self.monitor,
                                                                 value=float(value))


def pruned_run(folder: Path, epochs_run: int) -> bool:
    """Whether a finished run stopped because the pruner said so (its last epoch is the one it was pruned at)."""
    events = EventLog(RunDir(folder).file(RunDir.EVENTS)).read()
    return any(e.get("event") == "pruned" and e.get("epoch") == epochs_run for e in events)


@dataclass
class Outcome:
    number: int
    state: str
    value: float | None
    params: dict[str, Any]
    epochs: int
    seconds: float
    reason: str | None = None


def one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:300]}" if text else type(e).__name__


def run_trial(study: optuna.Study, trial: Trial, resumed: bool, base: Config, params: list[Param],
              out: Path) -> Outcome:
    """Train one trial into its run folder and tell the study how it ended; a failure never stops the search."""
    t0 = time.perf_counter()
    folder = trial_dir(out, trial.number)
    trial.set_user_attr("run", str(folder.relative_to(out)))
    values: dict[str, Any] = {}
    report = ReportToTrial(trial, folder)
    try:
        values = suggest(trial, params)
        cfg = trial_config(base, values)  # a combination the config refuses fails here, in a millisecond
        cfg.out, cfg.verbose = str(folder), 0
        cfg.train.nan_policy = "stop"  # a diverging trial is a failed trial, not one to nurse
        cfg.train.checks = False  # train's cheap checks, repeated per trial, doubled a head search (cnnlab doctor)
        with Heartbeat(trial):
            run = train_or_resume(cfg, folder, resumed, report)
        value = (run.metrics.get("best") or {}).get(run.config.callbacks.monitor)
        if value is None or not math.isfinite(value):
            raise ValueError(f"no finite {run.config.callbacks.monitor} on val (a val split is needed)")
        epochs = int(run.metrics.get("epochs_run", 0))
    except (Exception, SystemExit) as e:  # NaN, out of memory, a bad combination: recorded, the study goes on
        reason = one_line(e)
        trial.set_user_attr("fail_reason", reason)
        if not folder.is_dir():  # it failed before its run folder had anything in it (fit removes it then)
            trial.set_user_attr("run", None)
        study.tell(trial, state=TrialState.FAIL)
        return Outcome(trial.number, "FAIL", None, values, 0, time.perf_counter() - t0, reason)
    trial.set_user_attr("epochs", epochs)
    if report.pruned_at is not None or (resumed and pruned_run(folder, epochs)):
        told = study.tell(trial, state=TrialState.PRUNED)  # Optuna records the last reported epoch's value
        return Outcome(trial.number, "PRUNED", told.value, values, epochs, time.perf_counter() - t0)
    study.tell(trial, float(value))
    return Outcome(trial.number, "COMPLETE", float(value), values, epochs, time.perf_counter() - t0)


def train_or_resume(cfg: Config, folder: Path, resumed: bool, report: ReportToTrial) -> Any:
    """api.fit into a new folder; for a resumed trial, api.resume of its folder (or a fresh start)."""
    from cnnlab.api import fit, resume
    from cnnlab.inference import load_run

    if folder.exists() and (folder / RunDir.CONFIG).is_file():
        if resumed and RunDir(folder).is_finished():  # its worker died after training, before telling the study
            return load_run(folder)
        if resumed:
            return resume(folder, callbacks=[report])
        raise RuntimeError(f"{folder} already holds a run of another trial")  # never overwritten
    if folder.exists() and any(folder.iterdir()):
        k = 1
        while folder.with_name(f"{folder.name}.killed-{k}").exists():
            k += 1
        folder.rename(folder.with_name(f"{folder.name}.killed-{k}"))
    return fit(config=cfg, callbacks=[report])
