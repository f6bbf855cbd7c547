"""The Python API for training: `fit`, `resume`, `compute_features`. The CLI is a thin layer over these.

    run = cnnlab.fit("digits", model="seed_cnn", epochs=5)
    run = cnnlab.resume("runs/...")      # continue a killed run from its last checkpoint
    run = cnnlab.load_run("runs/...")    # (cnnlab.inference) everything back from a run folder alone

`fit` takes every option of the config table (cnnlab/config/schema.py) as a keyword; `cnnlab train --help` lists
them with their defaults.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from cnnlab.config import Config, build_config, fields
from cnnlab.data.preprocess import Preprocess
from cnnlab.errors import CnnlabError
from cnnlab.inference import Run
from cnnlab.prepare import prepare_data
from cnnlab.recipe import build_model, check_model_available, resolve_normalization, seed_everything
from cnnlab.runs import RunDir
from cnnlab.session import make_console, train
from cnnlab.train.callbacks import Callback
from cnnlab.train.checkpoint import load_state
from cnnlab.train.faults import EventLog
from cnnlab.train.state import check_state
from cnnlab.train.trainer import resolve_device, resolve_precision
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
    if resume is not None:
        return resume_run(resume, callbacks=callbacks, **kwargs)
    cfg = build_config(data, config, overrides, **kwargs)
    run_dir = RunDir.create(cfg.out, cfg.model.name)
    try:
        return train(cfg, run_dir, callbacks=callbacks)
    except BaseException:
        run_dir.remove_if_empty()  # nothing was written: leave no empty folder behind
        raise


fit.__doc__ += "\n    Keywords:\n" + "\n".join(f"        {f.keyword} ({f.path}): {f.option.help}" for f in fields())

RESUME_CHANGES = ("device", "quiet", "checkpoint_every")  # all a resumed run may change


def resume_run(run_dir: str | Path, *, callbacks: list[Callback] | None = None, device: str | None = None,
           quiet: bool | None = None, checkpoint_every: int | None = None, **changes: Any) -> Run:
    """Continue the run in `run_dir` from its last checkpoint and finish it.

    The run's config.yaml is the whole recipe: the data are read and decoded exactly as before, the full state
    comes back from last_state.pt, and training continues at the saved (epoch, step), ending with the same weights
    and metrics as a run that was never interrupted (on the CPU, bit for bit). Only the run folder is touched:
    metrics.csv rows and TensorBoard events written after the checkpoint are dropped (they are written again), and
    temporary files of an interrupted save are removed. A run killed before its first checkpoint starts again.

    Args:
        run_dir: a run folder written by cnnlab.fit / `cnnlab train`.
        callbacks: the extra callbacks the run was started with (their states are restored).
        device, quiet, checkpoint_every: the only settings a resumed run may change.
    """
    changed = sorted(k for k, v in changes.items() if v not in (None, [], {}))
    if changed:
        raise CnnlabError(f"a resumed run continues with its own config.yaml, so {', '.join(changed)} cannot be "
                          "changed; start a new run to train differently (--config RUN/config.yaml)")
    run = RunDir.open(run_dir)
    cfg = run.read_config()
    cfg.out = str(run.path)
    if device is not None:
        cfg.train.device = device
    if quiet is not None:  # --quiet: epoch lines, no progress bar (as fit maps it)
        cfg.verbose = 2 if quiet else 1
    if checkpoint_every is not None:
        cfg.train.checkpoint_every_steps = checkpoint_every
    state = read_resume_state(run, cfg.train.epochs)
    run.remove_stale_temporaries()
    run.repair(completed=len(state["history"]) if state is not None else None)
    console = make_console(cfg.verbose)
    where = (f"epoch {state['epoch'] + 1}, step {state['step']}" if state is not None else
             "the beginning (no checkpoint was saved before it stopped)")
    if cfg.verbose:
        console.print(f"resuming {run.path} at {where}", markup=False, soft_wrap=True)
    EventLog(run.file(run.EVENTS)).write("resume", at=where, command=" ".join(sys.argv))
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
    check_model_available(cfg)
    seed_everything(cfg.train.seed)
    prepared = prepare_data(cfg, lambda m: None)
    model = build_model(cfg, len(prepared.class_names), prepared.geometry)
    norm = resolve_normalization(cfg, prepared, model)
    device = resolve_device(cfg.train.device)
    precision = resolve_precision(cfg.train.precision, device)
    model.to(device)
    preprocess = Preprocess(norm.mode, norm.mean, norm.std, device, False, norm.whitening)
    return load_or_compute_features(model, cfg, prepared.splits, prepared.geometry, norm, preprocess, device,
                                    precision, lambda m: None)
