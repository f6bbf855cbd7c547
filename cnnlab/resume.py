"""Continue a run from its last checkpoint: `cnnlab train --resume RUN`, `cnnlab.resume(RUN)`.

The run's config.yaml (yaml.safe_load) is the whole recipe: the data are read and decoded exactly as before,
the full state comes back from last_state.pt (torch.load with weights_only=True), and training continues at the
saved (epoch, step), ending with the same weights and metrics as a run that was never interrupted (on the CPU,
bit for bit). Only the run folder is touched: rows of metrics.csv and TensorBoard events written after the
checkpoint are dropped (they are written again), and temporary files of an interrupted save are removed.
A run killed before its first checkpoint starts again from the beginning, which gives the same result.
"""

from __future__ import annotations

import csv
import os
import sys
from pathlib import Path
from typing import Any

from rich.console import Console

from cnnlab.config import load_config
from cnnlab.errors import CnnlabError
from cnnlab.train.autosave import EVENTS_FILE, STATE_FILE, WEIGHTS_FILE
from cnnlab.train.callbacks import Callback
from cnnlab.train.checkpoint import load_state
from cnnlab.train.faults import EventLog
from cnnlab.train.loop import resolve_device, resolve_precision
from cnnlab.train.state import check_state

RUN_OUTPUTS = ("last_state.pt", "last.safetensors", "best.safetensors", "metrics.csv", "metrics.json")


def resume(run_dir: str | Path, *, callbacks: list[Callback] | None = None, device: str | None = None,
           quiet: bool | None = None, checkpoint_every: int | None = None, **changes: Any):
    """Continue the run in `run_dir` from its last checkpoint and finish it.

    Args:
        run_dir: a run folder written by cnnlab.fit / `cnnlab train`.
        callbacks: the extra callbacks the run was started with (their states are restored).
        device, quiet, checkpoint_every: the only settings a resumed run may change.

    Returns:
        The finished Run, as fit returns it.
    """
    changed = sorted(k for k, v in changes.items() if v not in (None, [], {}))
    if changed:
        raise CnnlabError(f"a resumed run continues with its own config.yaml, so {', '.join(changed)} cannot be "
                          "changed; start a new run to train differently (--config RUN/config.yaml)")
    from cnnlab.api import _fit_in  # the one orchestration path, shared with fit

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise CnnlabError(f"{run_dir} is not a cnnlab run folder (no config.yaml): pass the folder that "
                          "`cnnlab train` printed")
    cfg = load_config(run_dir / "config.yaml")
    cfg.out = str(run_dir)
    if device is not None:
        cfg.train.device = device
    if quiet is not None:  # --quiet: epoch lines, no progress bar (as fit maps it)
        cfg.verbose = 2 if quiet else 1
    if checkpoint_every is not None:
        cfg.train.checkpoint_every_steps = checkpoint_every
    state = read_resume_state(run_dir, cfg.train.epochs)
    if state is not None:
        cfg.model.weights, cfg.model.pretrained = None, False  # the checkpoint holds the weights
    remove_stale_temporaries(run_dir)
    repair_run_folder(run_dir, completed=len(state["history"]) if state is not None else None)
    dev = resolve_device(cfg.train.device)
    precision = resolve_precision(cfg.train.precision, dev)
    console = Console(highlight=False, quiet=cfg.verbose == 0)
    where = (f"epoch {state['epoch'] + 1}, step {state['step']}" if state is not None else
             "the beginning (no checkpoint was saved before it stopped)")
    if cfg.verbose:
        console.print(f"resuming {run_dir} at {where}", markup=False, soft_wrap=True)
    EventLog(run_dir / EVENTS_FILE).write("resume", at=where, command=" ".join(sys.argv))
    return _fit_in(cfg, run_dir, dev, precision, console, list(callbacks or []), resume_state=state)


def read_resume_state(run_dir: Path, epochs: int | str) -> dict[str, Any] | None:
    """The checkpoint to resume from (None: none was saved yet); refuses a finished run."""
    path = run_dir / STATE_FILE
    if not path.is_file():
        return None
    state = check_state(load_state(path), str(path))
    finished = state.get("stop_training") or (isinstance(epochs, int) and int(state["epoch"]) >= epochs)
    if finished and (run_dir / "metrics.json").is_file():
        raise CnnlabError(f"{run_dir} has already finished ({len(state['history'])} epochs, metrics.json written); "
                          "nothing to resume. To train longer, start a new run from its weights: cnnlab train "
                          f"--config {run_dir}/config.yaml --weights {run_dir}/{WEIGHTS_FILE} --out NEW_FOLDER")
    return state


def remove_stale_temporaries(run_dir: Path) -> list[str]:
    """Delete the temporary files of a save that was killed half-way (`.<output>.<random>.tmp`)."""
    removed = []
    for path in run_dir.iterdir():
        name = path.name
        if name.startswith(".") and name.endswith(".tmp") and any(name.startswith(f".{o}.") for o in RUN_OUTPUTS):
            path.unlink(missing_ok=True)
            removed.append(name)
    return removed


def repair_run_folder(run_dir: Path, completed: int | None) -> None:
    """Drop what the run wrote after its checkpoint: metrics.csv rows past `completed` epochs (all of them and
    the run's own outputs when there is no checkpoint, `completed` None), so they are written once, again."""
    if completed is None:
        for name in (*RUN_OUTPUTS, WEIGHTS_FILE):
            (run_dir / name).unlink(missing_ok=True)
        for path in (run_dir / "tensorboard").glob("events.out.tfevents.*"):
            path.unlink()
        return
    _truncate_csv(run_dir / "metrics.csv", completed)


def _truncate_csv(path: Path, completed: int) -> None:
    if not path.is_file():
        return
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if not rows:
        return
    kept = [rows[0]] + [r for r in rows[1:] if r and r[0].isdigit() and int(r[0]) <= completed]
    if len(kept) == len(rows):
        return
    tmp = path.with_name(f".{path.name}.resume.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(kept)
    os.replace(tmp, path)
