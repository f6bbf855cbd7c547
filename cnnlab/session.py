"""The one training path: `train(cfg, run_dir, resume_state=None)`. `fit`, `resume` (and tune, doctor and
distributed workers) call it.

    data (prepare) -> balance plan -> model -> normalization -> transfer plan -> batches
      -> resolve (the final, frozen config) -> trainer -> run folder files -> epochs -> final metrics

Everything before `resolve` reads the user's config and returns facts; everything after reads the resolved one.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from rich.console import Console
from torch import nn

from cnnlab import __version__, distributed
from cnnlab.config import Config
from cnnlab.data import balance
from cnnlab.data.augment import build_augmenter
from cnnlab.data.augment import describe as describe_augment
from cnnlab.data.dataset import DecodedSplit
from cnnlab.data.samplers import create_sampler
from cnnlab.data.stream import make_batches
from cnnlab.environment import environment_info
from cnnlab.errors import CnnlabError
from cnnlab.inference import Run
from cnnlab.models.rewrite import pool_before_activation
from cnnlab.models.summary import format_summary, summarize
from cnnlab.prepare import PreparedData, prepare_data
from cnnlab.recipe import (
    build_checkpointer,
    build_model,
    build_predictor,
    build_trainer,
    check_model_available,
    resolve,
    resolve_normalization,
    seed_everything,
)
from cnnlab.results import final_metrics, print_final
from cnnlab.runs import RunDir
from cnnlab.train import dist
from cnnlab.train.autosave import RunCheckpointer
from cnnlab.train.callbacks import Callback, RunContext, build_callbacks
from cnnlab.train.optim import resolve_batch_size, resolve_epochs
from cnnlab.train.trainer import Trainer, resolve_device, resolve_precision
from cnnlab.transfer.heads import fit_logreg
from cnnlab.transfer.strategy import TransferPlan, plan_transfer


@dataclass
class Session:
    """One run being trained: its resolved config, data, model, trainer and batches."""

    cfg: Config  # resolved and frozen
    run: RunDir
    data: PreparedData
    model: nn.Module
    trainer: Trainer
    train: Any  # batches of images, or of cached features
    val: Any
    eval_splits: dict[str, Any]  # what the final metrics are computed on (decoded images or features)
    transfer: TransferPlan | None
    balance: balance.BalancePlan
    device: torch.device
    precision: str
    checkpointer: RunCheckpointer | None
    meta: dict[str, Any]  # versions, device, command (config.yaml's `meta`)
    log: Callable[[str], None]
    distributed: dict[str, Any] | None = None  # how the run is split over the ranks (config.yaml's `resolved`)


def make_console(verbose: int) -> Console:
    return Console(highlight=False, quiet=verbose == 0)


def train(cfg: Config, run_dir: RunDir, resume_state: dict | None = None, callbacks: list[Callback] | None = None,
          console: Console | None = None, before: Callable | None = None) -> Run:
    """Train the run `cfg` describes into `run_dir` (from the start, or from `resume_state`) and finish it.

    `before(cfg, run_dir, data, model, norm, log) -> cfg`: called once data and model exist, before anything is
    decided from the config (fit passes the doctor's cheap checks and its `--lr find`)."""
    console = console or make_console(cfg.verbose if dist.is_writer() else 0)  # rank 0 prints for the job
    session = start(cfg, run_dir, resume_state, list(callbacks or []), console, before)
    t0 = time.perf_counter()
    run_epochs(session, resume_state)
    return finish(session, time.perf_counter() - t0)


def start(cfg: Config, run_dir: RunDir, resume_state: dict | None, extra: list[Callback], console: Console,
          before: Callable | None = None) -> Session:
    """Everything up to the first step: data, plans, model, the resolved config, trainer and run files."""
    log = lambda m: console.print(m, markup=False, soft_wrap=True)  # noqa: E731
    device = distributed.rank_device(cfg) if dist.active() else resolve_device(cfg.train.device)
    precision = resolve_precision(cfg.train.precision, device)
    distributed.check_supported(cfg, device)
    check_model_available(cfg)
    seed_everything(cfg.train.seed)
    data = prepare_data(cfg, log)
    num_classes = len(data.class_names)
    plan = balance.plan_balance(cfg, data.splits["train"].y, num_classes, "val" in data.splits, log)
    training = with_synthetic(cfg, data, plan, log)  # data, or a copy with SMOTE images in train
    seed_everything(cfg.train.seed)
    model = build_model(cfg, num_classes, data.geometry, log, load_weights=resume_state is None)
    if dist.rank() > 0:  # every rank starts from the same weights; each draws its own dropout masks
        torch.manual_seed(cfg.train.seed + 1_000_003 * dist.rank())
    norm = resolve_normalization(cfg, data, model)
    if before is not None and resume_state is None:
        cfg = before(cfg, run_dir, data, model, norm, log)  # it consumes no global random state
    tplan = (plan_transfer(cfg, model, data.splits, data.class_names, data.geometry, norm, device, precision, log)
             if cfg.transfer.strategy != "none" else None)
    features = tplan.feature_splits if tplan is not None else None
    strategy = tplan.strategy if tplan is not None else "none"
    splits = features or training.splits
    batch_size = resolve_batch_size(cfg.train.batch_size, strategy)
    sampler = (create_sampler(plan.sampler, splits["train"].y, num_classes, cfg.balance.epoch_samples)
               if plan.sampler else None)
    shard = dist.shard() if features is None else None  # a head on features trains alike on every rank
    train_batches = make_batches(splits["train"], batch_size, True, cfg.train.seed, device, cfg.data.workers,
                                 sampler=sampler, shard=shard)
    lr, lr_rule = distributed.scaled_lr(cfg, train_batches.batch_size)
    augmenter = build_augmenter(cfg.augment, cfg.train.seed, num_classes) if features is None else None
    if augmenter is not None:
        train_batches = augmenter.wrap(train_batches)
    val = (make_batches(splits["val"], cfg.train.eval_batch_size, False, 0, device, cfg.data.workers, shard=shard)
           if "val" in splits else None)
    epochs = resolve_epochs(cfg.train.epochs, len(train_batches), strategy)
    if lr_rule is not None:
        log(distributed.describe_lr_rule(lr_rule))
    final = resolve(cfg, data=data, norm=norm, balance=plan, strategy=strategy, batch_size=batch_size,
                    epochs=epochs, out=run_dir.path, lr=lr)
    ctx = RunContext(final, final.callbacks.monitor, val is not None, resume_state is not None, run_dir)
    callbacks = build_callbacks(ctx) + extra + (tplan.callbacks if tplan is not None else [])
    checkpointer = None if features is not None else build_checkpointer(final, run_dir)
    trainer = build_trainer(final, model, num_classes, device, precision, callbacks, console,
                            whitening=norm.whitening, augment=augmenter.mix if augmenter and augmenter.mixes else None,
                            tplan=tplan, checkpointer=checkpointer, steps_per_epoch=len(train_batches),
                            headline_metrics=balance.headline_metrics(plan, num_classes, val is not None))
    if augmenter is not None:
        log(f"augmentation {describe_augment(final.augment)}")
    session = Session(final, run_dir, data, model, trainer, train_batches, val, features or data.splits, tplan, plan,
                      device, precision, checkpointer, environment_info(device, precision), log)
    if dist.active() or lr_rule is not None:
        session.distributed = distributed.record(final, batch_size, lr_rule)
    write_start(session, resume_state is not None)
    return session


def with_synthetic(cfg: Config, data: PreparedData, plan: balance.BalancePlan,
                   log: Callable[[str], None]) -> PreparedData:
    """SMOTE-family on pixels: the synthetic images join the in-memory train split."""
    if plan.synthetic is None:
        return data
    train_split = data.splits["train"]
    if not isinstance(train_split, DecodedSplit):
        raise CnnlabError(f"{plan.synthetic} on pixels needs the train split in memory; it is streamed because "
                          "it is over data.memory_budget_mb: use a smaller --image-size or another --balance")
    x, y = balance.apply_synthetic(plan, train_split.x, train_split.y, cfg.balance.smote_k, cfg.train.seed, log)
    return dataclasses.replace(data, splits={**data.splits, "train": DecodedSplit(x, y, [])})


def write_start(session: Session, resuming: bool) -> None:
    """The model summary, the exact pool rewrite, the run folder's first files and the run's header line."""
    cfg, data, model = session.cfg, session.data, session.model
    d = cfg.data
    summary = format_summary(summarize(model, (d.channels, d.image_size, d.image_size), device=session.device),
                             title=f"Model: {cfg.model.name}")
    if session.transfer is None or session.transfer.feature_splits is None:
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
                f"{d.channels}x{d.image_size}x{d.image_size}, {counts}) on {session.device} ({session.precision}); "
                f"run folder {session.run.path}")


def run_epochs(session: Session, resume_state: dict | None) -> None:
    """A head on cached features (no checkpointer: its epochs take milliseconds), or the full model under the
    crash-safe checkpointer (resume, Ctrl-C, NaN rollback)."""
    t, trainer, run = session.cfg.train, session.trainer, session.run
    if session.checkpointer is None:
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
    cfg, trainer, run = session.cfg, session.trainer, session.run
    num_classes = len(session.data.class_names)
    if not dist.is_writer():  # rank 0 evaluates the best weights and writes the results
        return Run(run.path, cfg, session.data.class_names, session.model, trainer.predictor, trainer,
                   trainer.history, {}, session.meta)
    metrics = final_metrics(cfg, trainer, session.model, run, session.eval_splits, session.val is not None, wall)
    metrics["balance"] = session.balance.record()
    run.write_json(run.METRICS, metrics)
    if session.transfer is not None:
        record = dict(session.transfer.record)
        record["val"] = {k: v for k, v in (metrics.get("val") or {}).items() if k != "confusion_matrix"}
        run.write_json(run.TRANSFER, record)
    threshold = (metrics.get("threshold") or {}).get("value")
    if session.transfer is not None and session.transfer.feature_splits is not None:
        predictor = build_predictor(cfg, session.model, num_classes, session.device, session.precision,
                                    session.data.whitening, threshold)  # predicts from images with the full model
    else:
        predictor = trainer.predictor
    result = Run(run.path, cfg, session.data.class_names, session.model, predictor, trainer, trainer.history,
                 metrics, session.meta)
    print_final(result, session.log)
    return result
