"""The Python API for training: `fit`, `resume`, `compute_features`. The CLI is a thin layer over these.

    run = cnnlab.fit("digits", model="seed_cnn", epochs=5)
    run = cnnlab.resume("runs/...")      # continue a killed run from its last checkpoint
    run = cnnlab.load_run("runs/...")    # (cnnlab.inference) everything back from a run folder alone

`fit` takes every option of the config table (cnnlab/config/schema.py) as a keyword; `cnnlab train --help` lists
them with their defaults.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

from cnnlab import distributed
from cnnlab.config import Config, apply_keywords, build_config, config_to_yaml, fields
from cnnlab.doctor.run import before_training
from cnnlab.errors import CnnlabError
from cnnlab.inference import Run, load_run
from cnnlab.recipe import set_up
from cnnlab.report import report_if_asked
from cnnlab.runs import RunDir, default_path
from cnnlab.session import make_console, train
from cnnlab.train import dist
from cnnlab.train.callbacks import Callback
from cnnlab.train.checkpoint import load_state
from cnnlab.train.faults import EventLog
from cnnlab.train.state import check_state
from cnnlab.transfer.features import FeatureSet, load_or_compute_features


def fit(data: str | None = None, *, config: str | Path | Config | dict | None = None,
        callbacks: list[Callback] | None = None, overrides: list[str] | None = None,
        resume: str | Path | None = None, **kwargs: Any) -> Run:
    """Train a model on `data` and write a run folder.

    Args:
        data: DATA as the CLI takes it (folder, zip, csv, npz, IDX folder, builtin name).
        config: a YAML file, dict or Config to start from.
        callbacks: extra Callback objects (beside those the config asks for).
        overrides: dotted `section.key=value` strings.
        resume: a run folder to continue from its last checkpoint instead (see `resume`).
        **kwargs: any option of the config table by its keyword (listed below), `quiet`, or any config field
            as section__key.

    Returns:
        The Run: model, history, metrics and run folder.
    """
    if resume is not None:  # data, config and overrides are refused there: the run's own config.yaml is the recipe
        return resume_run(resume, callbacks=callbacks, data=data, config=config, overrides=overrides, **kwargs)
    cfg = build_config(data, config, overrides, **kwargs)
    if cfg.distributed.nproc > 1 and not distributed.in_worker():
        return fit_in_workers(cfg, callbacks)
    distributed.start(cfg)  # a torchrun / --nproc worker joins its process group
    try:
        run_dir = distributed.agree(lambda: RunDir.create(cfg.out, cfg.model.name))  # rank 0 creates it
        try:
            run = train(cfg, run_dir, callbacks=callbacks, before=before_training)
        except BaseException:
            if dist.is_writer():
                run_dir.remove_if_empty()  # nothing was written: leave no empty folder behind
            raise
        writer = dist.is_writer()  # asked before the process group is gone (then every process is rank 0)
    finally:
        distributed.stop()
    if writer:
        report_if_asked(run)  # --report: RUN/report/index.html, by rank 0 alone
    return run


def fit_in_workers(cfg: Config, callbacks: list[Callback] | None) -> Run:
    """fit(nproc=N) from Python: N worker processes train the config; the finished run is loaded back."""
    if callbacks:
        raise CnnlabError("callback objects cannot travel to worker processes: with nproc > 1 use the config's "
                          "callbacks (early_stopping, reduce_lr, target, ...), or run your script under torchrun")
    out = cfg.out or str(default_path(cfg.model.name))
    cfg.out = out
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(config_to_yaml(cfg), encoding="utf-8")
        code = distributed.launch(["train", "--config", str(path)], cfg.distributed.nproc, out)
    if code:
        raise distributed.WorkersRefused()
    run = load_run(out)
    run.history = RunDir(out).read_history()
    return run


fit.__doc__ += "\n    Keywords:\n" + "\n".join(f"        {f.keyword} ({f.path}): {f.option.help}" for f in fields())

def resume_run(run_dir: str | Path, *, callbacks: list[Callback] | None = None, device: str | None = None,
               quiet: bool | None = None, checkpoint_every: int | None = None, nproc: int | None = None,
               **changes: Any) -> Run:
    """Continue the run in `run_dir` from its last checkpoint and finish it.

    The run's config.yaml is the whole recipe: the data are read and decoded exactly as before, the full state
    comes back from last_state.pt, and training continues at the saved (epoch, step), ending with the same weights
    and metrics as a run that was never interrupted (on the CPU, bit for bit). Only the run folder is touched:
    metrics.csv rows and TensorBoard events written after the checkpoint are dropped (they are written again), and
    temporary files of an interrupted save are removed. A run killed before its first checkpoint starts again.

    Args:
        run_dir: a run folder written by cnnlab.fit / `cnnlab train`.
        callbacks: the extra callbacks the run was started with (their states are restored).
        device, quiet, checkpoint_every, nproc: the only settings a resumed run may change (another number of
            processes resumes with a note on what changes).
    """
    changed = sorted(k for k, v in changes.items() if v not in (None, [], {}))
    if changed:
        raise CnnlabError(f"a resumed run continues with its own config.yaml, so {', '.join(changed)} cannot be "
                          "changed; start a new run to train differently (--config RUN/config.yaml)")
    run = RunDir.open(run_dir)
    cfg = run.read_config()
    cfg.out = str(run.path)
    apply_keywords(cfg, {"device": device, "quiet": quiet, "checkpoint_every": checkpoint_every, "nproc": nproc},
                   "resume()")  # coerced and checked as fit's keywords are
    if cfg.distributed.nproc > 1 and not distributed.in_worker():
        if callbacks:
            raise CnnlabError("callback objects cannot travel to worker processes: resume with nproc=1")
        every = cfg.train.checkpoint_every_steps
        argv = ["train", "--resume", str(run.path), "--nproc", str(cfg.distributed.nproc), "--device",
                cfg.train.device, *(["--checkpoint-every", str(every)] if every else []),
                *(["--quiet"] if cfg.verbose == 2 else [])]
        if distributed.launch(argv, cfg.distributed.nproc, str(run.path)):
            raise distributed.WorkersRefused()
        resumed = load_run(run.path)
        resumed.history = run.read_history()
        return resumed
    distributed.start(cfg)
    try:
        finished = resume_here(cfg, run, callbacks)
        writer = dist.is_writer()
    finally:
        distributed.stop()
    if writer:
        report_if_asked(finished)  # a --report run writes its report when it finishes
    return finished


def resume_here(cfg: Config, run: RunDir, callbacks: list[Callback] | None) -> Run:
    """Resume in this process (one of the ranks of a distributed run): repair the folder (rank 0) and train."""
    state = read_resume_state(run, cfg.train.epochs)
    console = make_console(cfg.verbose if dist.is_writer() else 0)
    where = (f"epoch {state['epoch'] + 1}, step {state['step']}" if state is not None else
             "the beginning (no checkpoint was saved before it stopped)")
    if dist.is_writer():
        run.remove_stale_temporaries()
        run.repair(completed=len(state["history"]) if state is not None else None)
        if cfg.verbose:
            console.print(f"resuming {run.path} at {where}", markup=False, soft_wrap=True)
        EventLog(run.file(run.EVENTS)).write("resume", at=where, command=" ".join(sys.argv))
        note = distributed.world_change_note(state)
        if note:
            console.print(note, markup=False, soft_wrap=True)
    dist.barrier()  # the folder is repaired before any rank starts
    return train(cfg, run, resume_state=state, callbacks=callbacks, console=console)


resume = resume_run  # cnnlab.resume(RUN); fit(resume=RUN) calls it by its other name


def read_resume_state(run: RunDir, epochs: int | str) -> dict[str, Any] | None:
    """The checkpoint to resume from (None: none was saved yet); refuses a finished run."""
    path = run.file(run.STATE)
    if not path.is_file():
        return None
    state = check_state(load_state(path), str(path))
    finished = state.get("stop_training") or (isinstance(epochs, int) and int(state["epoch"]) >= epochs)
    if finished and run.is_finished():
        raise CnnlabError(f"{run.path} has already finished ({len(state['history'])} epochs, metrics.json written); "
                          "nothing to resume. To train longer, start a new run from its weights: cnnlab train "
                          f"--config {run.path}/config.yaml --weights {run.path}/{run.LAST} --out NEW_FOLDER")
    return state


def compute_features(data: str | None = None, config: Any = None, **kwargs: Any) -> FeatureSet:
    """Bottleneck features of a dataset for a pretrained model, as `fit` would use them (cached).

        fs = cnnlab.compute_features("cats_vs_dogs/", model="mobilenet_v1", weights="mnv1.tar", image_size=160,
                                     model_kwargs={"width": 0.25, "activation": "leaky_relu:0.1"})
        x, y = fs.x["train"], fs.y["train"]   # e.g. resample, then fit_logreg_head or any sklearn model
    """
    kwargs.setdefault("transfer__strategy", "feature-extract")
    cfg = build_config(data, config, None, caller="compute_features()", **kwargs)
    quiet = lambda m: None  # noqa: E731
    setup = set_up(cfg, quiet)
    setup.model.to(setup.device)
    return load_or_compute_features(setup.model, cfg, setup.data.splits, setup.data.geometry, setup.norm,
                                    setup.preprocess(), setup.device, setup.precision, quiet)
