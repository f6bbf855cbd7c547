"""The one training path: `train(cfg, run_dir, resume_state=None)`. `fit` and `resume` call it (tune through
them, distributed workers through fit / resume in each rank).

    set_up (device, data, the task and its plan, model, normalization) -> transfer plan -> batches
      -> resolve (the final, frozen config) -> trainer -> run folder files -> epochs -> final metrics

Everything before `resolve` reads the user's config and returns facts; everything after reads the resolved one.
The task (cnnlab.tasks) owns what is specific to its targets: which data steps apply, the loss, the metrics.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from rich.console import Console

from cnnlab import __version__, distributed
from cnnlab.config import Config
from cnnlab.data.augment import describe as describe_augment
from cnnlab.environment import environment_info
from cnnlab.errors import CnnlabError
from cnnlab.inference import Run
from cnnlab.models.rewrite import pool_before_activation
from cnnlab.models.summary import format_summary, summarize
from cnnlab.recipe import (
    Setup,
    build_checkpointer,
    build_predictor,
    build_trainer,
    resolve,
    set_up,
)
from cnnlab.results import final_metrics, print_final
from cnnlab.runs import RunDir
from cnnlab.train import dist
from cnnlab.train.autosave import RunCheckpointer
from cnnlab.train.callbacks import Callback, RunContext, build_callbacks
from cnnlab.train.optim import resolve_batch_size, resolve_epochs
from cnnlab.train.trainer import Trainer, resolve_device
from cnnlab.transfer.heads import fit_logreg
from cnnlab.transfer.strategy import TransferPlan, plan_transfer


@dataclass
class Session:
    """One run being trained: its resolved config, data, model, trainer and batches."""

    cfg: Config  # resolved and frozen
    run: RunDir
    setup: Setup  # device, precision, data, task, model, normalization
    trainer: Trainer
    train: Any  # batches of images, or of cached features
    val: Any
    transfer: TransferPlan | None
    checkpointer: RunCheckpointer | None
    meta: dict[str, Any]  # versions, device, command (config.yaml's `meta`)
    log: Callable[[str], None]
    distributed: dict[str, Any] | None = None  # how the run is split over the ranks (config.yaml's `resolved`)

    @property
    def on_features(self) -> bool:
        """A head trains on cached features (transfer `feature-extract`), not the full model."""
        return self.transfer is not None and self.transfer.on_features

    @property
    def eval_splits(self) -> dict[str, Any]:
        """What the final metrics are computed on: the cached features, or the decoded images."""
        return self.transfer.feature_splits if self.on_features else self.setup.data.splits


def make_console(verbose: int) -> Console:
    return Console(highlight=False, quiet=verbose == 0)


def train(cfg: Config, run_dir: RunDir, resume_state: dict | None = None, callbacks: list[Callback] | None = None,
          console: Console | None = None, before: Callable | None = None) -> Run:
    """Train the run `cfg` describes into `run_dir` (from the start, or from `resume_state`) and finish it.

    `before(cfg, run_dir, setup, log) -> cfg`: called once data and model exist (recipe.Setup), before anything is
    decided from the config (fit passes the doctor's cheap checks and its `--lr find`)."""
    console = console or make_console(cfg.verbose if dist.is_writer() else 0)  # rank 0 prints for the job
    t0 = time.perf_counter()  # the run's wall time: from reading the data (and computing features) to the end
    session = start(cfg, run_dir, resume_state, list(callbacks or []), console, before)
    run_epochs(session, resume_state)
    return finish(session, time.perf_counter() - t0)


def start(cfg: Config, run_dir: RunDir, resume_state: dict | None, extra: list[Callback], console: Console,
          before: Callable | None = None) -> Session:
    """Everything up to the first step: data, plans, model, the resolved config, trainer and run files."""
    log = lambda m: console.print(m, markup=False, soft_wrap=True)  # noqa: E731
    device = distributed.rank_device(cfg) if dist.active() else resolve_device(cfg.train.device)
    distributed.check_supported(cfg, device)
    setup = set_up(cfg, log, device=device, plan=True, load_weights=resume_state is None)
    task, data = setup.task, setup.data
    if dist.rank() > 0:  # every rank starts from the same weights; each draws its own dropout masks
        torch.manual_seed(cfg.train.seed + 1_000_003 * dist.rank())
    if before is not None and resume_state is None:
        cfg = before(cfg, run_dir, setup, log)  # it consumes no global random state
    tplan = plan_transfer_for(cfg, setup, log)
    on_features = tplan is not None and tplan.on_features
    splits = tplan.feature_splits if on_features else setup.training.splits
    batch_size = resolve_batch_size(cfg.train.batch_size, tplan.strategy if tplan is not None else "none")
    shard = None if on_features else dist.shard()  # a head on features trains alike on every rank
    train_batches = task.make_batches(splits["train"], batch_size, True, cfg.train.seed, device, cfg.data.workers,
                                      sampler=task.sampler(cfg, splits["train"].y), shard=shard)
    lr, lr_rule = distributed.scaled_lr(cfg, train_batches.batch_size)
    augmenter = None if on_features else task.augmenter(cfg)
    if augmenter is not None:
        train_batches = augmenter.wrap(train_batches)
    val = (task.make_batches(splits["val"], cfg.train.eval_batch_size, False, 0, device, cfg.data.workers,
                             shard=shard) if "val" in splits else None)
    epochs = resolve_epochs(cfg.train.epochs, len(train_batches), tplan.strategy if tplan is not None else "none")
    if lr_rule is not None:
        log(distributed.describe_lr_rule(lr_rule))
    final = resolve(cfg, data=data, norm=setup.norm, task=task, strategy=tplan.strategy if tplan else "none",
                    batch_size=batch_size, epochs=epochs, out=run_dir.path, lr=lr)
    ctx = RunContext(final, final.callbacks.monitor, val is not None, resume_state is not None, run_dir)
    callbacks = build_callbacks(ctx) + extra + (tplan.callbacks if tplan is not None else [])
    checkpointer = None if on_features else build_checkpointer(final, run_dir)
    trainer = build_trainer(final, setup, callbacks, console, augment=augmenter.mix if augmenter and
                            augmenter.mixes else None, tplan=tplan, checkpointer=checkpointer,
                            steps_per_epoch=len(train_batches))
    if augmenter is not None:
        log(f"augmentation {describe_augment(final.augment)}")
    session = Session(final, run_dir, setup, trainer, train_batches, val, tplan, checkpointer,
                      environment_info(device, setup.precision), log)
    if dist.active() or lr_rule is not None:
        session.distributed = distributed.record(final, batch_size, lr_rule)
    write_start(session, resume_state is not None)
    return session


def plan_transfer_for(cfg: Config, setup: Setup, log: Callable[[str], None]) -> TransferPlan | None:
    """The transfer plan of a run that asks for one (None for `--strategy none`); a head on cached features only
    for tasks whose data steps name it."""
    if cfg.transfer.strategy == "none":
        return None
    if cfg.transfer.strategy in ("feature-extract", "auto") and "features" not in setup.task.steps:
        raise CnnlabError(f"--strategy {cfg.transfer.strategy} trains a new head on cached features, which the "
                          f"{setup.task.name} task does not do: use --strategy fine-tune or full")
    return plan_transfer(cfg, setup.model, setup.data.splits, setup.data.class_names, setup.data.geometry,
                         setup.norm, setup.device, setup.precision, log)


def write_start(session: Session, resuming: bool) -> None:
    """The model summary, the exact pool rewrite, the run folder's first files and the run's header line."""
    cfg, setup = session.cfg, session.setup
    data, model, d = setup.data, setup.model, cfg.data
    summary = format_summary(summarize(model, (d.channels, d.image_size, d.image_size), device=setup.device),
                             title=f"Model: {cfg.model.name}")
    if not session.on_features:
        pool_before_activation(model)  # after the summary, which shows the model as defined
    if not resuming and dist.is_writer():
        resolved = {"num_classes": len(data.class_names), "data_kind": data.source.kind,
                    "label_col": data.source.label_col, "counts": {s: len(v) for s, v in data.splits.items()}}
        if session.distributed is not None:
            resolved["distributed"] = session.distributed
        session.run.write_start(cfg, meta=session.meta, resolved=resolved, classes=data.class_names, summary=summary,
                                skipped=data.skipped, whitening=data.whitening)
    counts = ", ".join(f"{k} {len(v)}" for k, v in data.splits.items())
    session.log(f"cnnlab {__version__}: {cfg.model.name} on {data.source.name} ({len(data.class_names)} classes, "
                f"{d.channels}x{d.image_size}x{d.image_size}, {counts}) on {setup.device} ({setup.precision}); "
                f"run folder {session.run.path}")


def run_epochs(session: Session, resume_state: dict | None) -> None:
    """A head on cached features (no checkpointer: its epochs take milliseconds), or the full model under the
    crash-safe checkpointer (resume, Ctrl-C, NaN rollback)."""
    t, trainer, run = session.cfg.train, session.trainer, session.run
    if session.on_features:
        if session.cfg.transfer.head == "logreg":
            fit_logreg(trainer, session.train, session.val, run.file(run.BEST))
        else:
            trainer.fit(session.train, session.val, t.epochs)
        trainer.save_weights(run.file(run.LAST))  # the full model (rank 0 only)
        return
    start_epoch, start_step = session.checkpointer.start(resume_state, t.epochs)
    with session.checkpointer.protect():  # Ctrl-C saves and stops; a full disk is one clear line
        trainer.fit(session.train, session.val, t.epochs, start_epoch, start_step)


def finish(session: Session, wall: float) -> Run:
    """Final metrics of the best weights, metrics.json, transfer.json, and the Run."""
    cfg, trainer, run, setup = session.cfg, session.trainer, session.run, session.setup
    if not dist.is_writer():  # rank 0 evaluates the best weights and writes the results
        return Run(run.path, cfg, setup.data.class_names, setup.model, trainer.predictor, trainer, trainer.history,
                   {}, session.meta)
    metrics = final_metrics(cfg, trainer, setup.model, run, session.eval_splits, session.val is not None, wall)
    metrics.update(trainer.task.record())
    run.write_json(run.METRICS, metrics)
    if session.transfer is not None:
        record = dict(session.transfer.record)
        record["val"] = {k: v for k, v in (metrics.get("val") or {}).items() if isinstance(v, (int, float))}
        run.write_json(run.TRANSFER, record)
    predictor = trainer.predictor
    if session.on_features:  # predicts from images with the full model
        predictor = build_predictor(cfg, setup.model, trainer.task, setup.device, setup.precision,
                                    setup.data.whitening)
    result = Run(run.path, cfg, setup.data.class_names, setup.model, predictor, trainer, trainer.history, metrics,
                 session.meta)
    print_final(result, session.log)
    return result
