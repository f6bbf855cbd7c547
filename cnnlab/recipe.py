"""From a Config to what a run is built of: the front half every command shares, the one resolve step, and the
builders that read its result.

`set_up` is the front half of `cnnlab train`, `cnnlab doctor` and `compute_features`: the device, the data, the
task, the model (the global seed set once, right before it is built), its normalization.

`resolve` is the only place the user's config becomes the run's final config: it takes the user's config and what
the data (geometry, statistics), the model (its mean / std), the task (a classifier's balance plan: loss, class
weights, monitor), the transfer plan (the strategy `auto` chose) and the loop (batch size, epochs, learning rate)
decided, and returns a frozen Config. That is what config.yaml holds; every builder below reads it and none writes
it. The model is built before the resolve (it needs only the geometry). The trainer, its optimizer, schedule, loss,
preprocessing and checkpointer are built from the resolved config.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from torch import nn

from cnnlab.config import Config
from cnnlab.data.preprocess import Normalization, Preprocess
from cnnlab.models.base import IMAGENET_CFG, has_conv
from cnnlab.models.layers import weight_decay_groups
from cnnlab.prepare import PreparedData, prepare_data
from cnnlab.runs import RunDir
from cnnlab.tasks import Task, create_task
from cnnlab.train import dist
from cnnlab.train.autosave import RunCheckpointer
from cnnlab.train.callbacks import Callback
from cnnlab.train.faults import EventLog
from cnnlab.train.optim import create_optimizer, create_scheduler, resolve_lr
from cnnlab.train.predictor import Predictor
from cnnlab.train.trainer import Trainer, resolve_device, resolve_precision
from cnnlab.transfer.heads import FeatureTrainer
from cnnlab.transfer.strategy import TransferPlan


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators (model init, dropout)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))


def check_model_available(cfg: Config) -> None:
    """Before any data is read: a timm model exists, a layer-spec file parses (registered names: config.validate)."""
    name = cfg.model.name
    if name.startswith("timm:"):
        import timm

        from cnnlab.models.registry import timm_model_error

        if not timm.is_model(name[5:]):
            raise timm_model_error(name[5:])
    elif name.endswith((".yaml", ".yml", ".txt")):
        from cnnlab.models.spec import read_spec_file

        read_spec_file(name)


# ------------------------------------------------------------------------------------------------------------
# the front half (before resolve)


@dataclass
class Setup:
    """What a run, the doctor and compute_features start from: device and precision, the prepared data, the task,
    the model and the normalization its inputs get."""

    device: torch.device
    precision: str
    data: PreparedData
    training: PreparedData  # what training reads: `data`, or a copy with the task's additions (SMOTE images)
    task: Task
    model: nn.Module
    norm: Normalization

    def preprocess(self, device: torch.device | None = None, channels_last: bool = False) -> Preprocess:
        """The preprocessing of the model's inputs (on `device`, default the setup's)."""
        return Preprocess(self.norm, device or self.device, channels_last)


def set_up(cfg: Config, log: Callable[[str], None], *, device: torch.device | None = None, plan: bool = False,
           load_weights: bool = True, module: nn.Module | None = None) -> Setup:
    """Device, data, task (with `plan`: its data decisions, e.g. the balance plan and SMOTE), model and
    normalization, as every command builds them. The global seed is set once, right before the model is built
    (nothing before it draws from the global generators). `module`: a model to use instead of building one."""
    device = device or resolve_device(cfg.train.device)
    precision = resolve_precision(cfg.train.precision, device)
    check_model_available(cfg)
    data = prepare_data(cfg, log)
    task = create_task(cfg, data.class_names)
    training = data
    if plan:
        task.plan(cfg, data, log)
        training = task.training_data(cfg, data, log)
    seed_everything(cfg.train.seed)
    model = module if module is not None else task.build_model(cfg, data.geometry, log, load_weights)
    return Setup(device, precision, data, training, task, model, resolve_normalization(cfg, data, model))


def resolve_normalization(cfg: Config, data: PreparedData, model: nn.Module) -> Normalization:
    """The data's normalization, with the model's own mean / std for `model` (ImageNet's when it has none)."""
    norm = data.normalization
    if norm.mode != "model" or (norm.mean is not None and norm.std is not None):
        return norm
    defaults = getattr(model, "default_cfg", {}) or {}
    mean, std = defaults.get("mean", IMAGENET_CFG["mean"]), defaults.get("std", IMAGENET_CFG["std"])
    if data.geometry.channels == 3:
        return Normalization("model", [float(v) for v in mean][:3], [float(v) for v in std][:3])
    return Normalization("model", [float(np.mean(mean))], [float(np.mean(std))])


# ------------------------------------------------------------------------------------------------------------
# the one resolve step


def resolve(cfg: Config, *, data: PreparedData, norm: Normalization, task: Task, strategy: str,
            batch_size: int | str, epochs: int, out: str | Path, lr: float | None = None) -> Config:
    """The run's final config: `cfg` plus every decision, frozen. Resolving a resolved config changes nothing.

    `lr`: a learning rate decided for the run (the distributed scale_lr rule); once applied the rule is off.
    Otherwise train.lr becomes a number (the optimizer's default when none was given).
    """
    final = cfg.copy()
    if lr is not None:
        final.train.lr, final.distributed.scale_lr = lr, False
    final.train.lr = resolve_lr(final.train.lr, final.train.optimizer)
    d = final.data
    d.image_size, d.channels = data.geometry.size[0], data.geometry.channels
    d.normalize, d.mean, d.std = norm.mode, norm.mean, norm.std
    task.resolve(final, "val" in data.splits)  # the classifier: balance methods, class weights, loss, monitor
    final.transfer.strategy = strategy
    final.train.batch_size, final.train.epochs = batch_size, epochs
    final.out = str(out)
    pin_local_paths(final)
    final.freeze()
    return final


def pin_local_paths(cfg: Config) -> None:
    """Paths that exist become absolute, so the run's config.yaml resumes and re-runs from any directory; builtin
    names (digits, mnist, ...) and paths that do not exist (their error comes later, as typed) stay as given."""
    for section, key in (("data", "source"), ("data", "images"), ("model", "weights")):
        holder = getattr(cfg, section)
        value = getattr(holder, key)
        if isinstance(value, str) and value:
            path = Path(value).expanduser()
            if path.exists():
                setattr(holder, key, str(path.resolve()))


# ------------------------------------------------------------------------------------------------------------
# builders: they read the resolved config


def build_preprocess(cfg: Config, device: torch.device, channels_last: bool,
                     whitening: dict[str, torch.Tensor] | None = None) -> Preprocess:
    """The batch preprocessing of cfg.data.normalize (whitening: the run's fitted map, preprocess.safetensors)."""
    d = cfg.data
    return Preprocess(Normalization(d.normalize, d.mean, d.std, whitening), device, channels_last)


def build_optimizer(cfg: Config, model: nn.Module, param_groups: list[dict[str, Any]] | None = None):
    """The optimizer of cfg.train over `param_groups` (transfer), else the model's trainable parameters, with
    weight decay on weights only unless train.decay_bias_and_norm."""
    t = cfg.train
    if param_groups is not None:
        params = param_groups
    elif t.weight_decay > 0 and not t.decay_bias_and_norm:
        params = weight_decay_groups(model, t.weight_decay)
    else:
        params = [p for p in model.parameters() if p.requires_grad]
    return create_optimizer(t.optimizer, params, t.lr, t.momentum, t.nesterov, t.weight_decay)


def build_checkpointer(cfg: Config, run: RunDir) -> RunCheckpointer:
    """The crash-safe `last` checkpoint and the NaN recovery of a run that trains the model's layers."""
    t = cfg.train
    return RunCheckpointer(run.path, run.file(run.STATE), run.file(run.LAST), t.checkpoint_every_steps,
                           EventLog(run.file(run.EVENTS) if dist.is_writer() else None), t.nan_policy,
                           t.nan_retries, t.nan_lr_factor)


def build_trainer(cfg: Config, setup: Setup, callbacks: list[Callback], console: Console, *, augment: Any,
                  tplan: TransferPlan | None, checkpointer: RunCheckpointer | None, steps_per_epoch: int) -> Trainer:
    """The Trainer of the model (or, for feature extraction, of its head on cached features) with its schedule."""
    task, model, device = setup.task, setup.model, setup.device
    if tplan is not None and tplan.on_features:  # only the head trains, on features in memory
        head = model.get_classifier().to(device)
        optimizer = build_optimizer(cfg, head, list(head.parameters()))
        return FeatureTrainer(model, Predictor(head, task.setup(cfg, device), lambda x: x, device, "fp32"), optimizer,
                              scheduler=build_scheduler(cfg, optimizer, steps_per_epoch), callbacks=callbacks,
                              grad_clip=cfg.train.grad_clip, console=console)
    predictor = build_predictor(cfg, model, task, device, setup.precision, setup.norm.whitening)
    optimizer = build_optimizer(cfg, model, tplan.param_groups if tplan is not None else None)
    if checkpointer is not None:
        callbacks = [*callbacks, checkpointer]  # last: it saves every other callback's state
    return Trainer(predictor, optimizer, scheduler=build_scheduler(cfg, optimizer, steps_per_epoch),
                   callbacks=callbacks, augment=augment, grad_clip=cfg.train.grad_clip,
                   recovery=checkpointer.guard if checkpointer is not None else None, console=console,
                   train_model=wrap_distributed(cfg, model, device))


def wrap_distributed(cfg: Config, model: nn.Module, device: torch.device) -> nn.Module | None:
    """DistributedDataParallel around the model in a distributed run (gradients averaged over the ranks), else None.
    The Trainer trains through the wrapper; everything else (checkpoints, callbacks, evaluation) uses the model."""
    if not dist.active():
        return None
    from torch.nn.parallel import DistributedDataParallel

    if cfg.distributed.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def build_scheduler(cfg: Config, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    """The learning-rate schedule of cfg.train over the run's steps."""
    t = cfg.train
    return create_scheduler(t.schedule, optimizer, t.epochs * steps_per_epoch, steps_per_epoch, t.warmup_epochs,
                            step_size=t.step_size, gamma=t.gamma)


def build_predictor(cfg: Config, model: nn.Module, task: Task, device: torch.device, precision: str,
                    whitening: dict | None = None) -> Predictor:
    """The Predictor of a trained full model on `device` (channels_last when it convolves), its task bound to
    `cfg` on `device`."""
    channels_last = has_conv(model)
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return Predictor(model, task.setup(cfg, device), build_preprocess(cfg, device, channels_last, whitening),
                     device, precision)
