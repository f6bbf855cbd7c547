"""From a Config to what a run is built of: the one resolve step, and the builders that read its result.

`resolve` is the only place the user's config becomes the run's final config: it takes the user's config and what
the data (geometry, statistics), the model (its mean / std), the balance plan (loss, class weights, monitor), the
transfer plan (the strategy `auto` chose) and the loop (batch size, epochs) decided, and returns a frozen Config.
That is what config.yaml holds; every builder below reads it and none writes it. `build_model` runs before the
resolve (it needs only the geometry), so it takes the geometry as an argument. The trainer, its optimizer,
schedule, loss, preprocessing and checkpointer are built from the resolved config.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from torch import nn

from cnnlab.config import Config
from cnnlab.data.balance import BalancePlan
from cnnlab.data.dataset import ImageGeometry
from cnnlab.data.preprocess import Normalization, Preprocess
from cnnlab.errors import CnnlabError
from cnnlab.models import create_model
from cnnlab.models.base import IMAGENET_CFG, has_conv
from cnnlab.models.layers import weight_decay_groups
from cnnlab.prepare import PreparedData
from cnnlab.runs import RunDir
from cnnlab.train import dist
from cnnlab.train.autosave import RunCheckpointer
from cnnlab.train.callbacks import Callback
from cnnlab.train.faults import EventLog
from cnnlab.train.losses import REGRESSION_LOSSES, create_loss
from cnnlab.train.optim import create_optimizer, create_scheduler
from cnnlab.train.predictor import Predictor
from cnnlab.train.trainer import Trainer
from cnnlab.transfer.heads import FeatureTrainer, apply_head
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
# the model (before resolve: it needs only the geometry)


def build_model(cfg: Config, num_classes: int, geometry: ImageGeometry, log: Callable[[str], None] | None = None,
                load_weights: bool = True) -> nn.Module:
    """create_model from cfg.model, plus --weights (unless `load_weights` is off) and a transfer head."""
    h, w = geometry.size
    model = create_model(cfg.model.name, num_classes, in_chans=geometry.channels, input_size=(h, w),
                         pretrained=cfg.model.pretrained and load_weights, **cfg.model.kwargs)
    if cfg.model.weights and load_weights:
        skip = cfg.model.skip_head if cfg.model.skip_head is not None else cfg.transfer.strategy != "none"
        report = load_initial_weights(model, cfg.model.weights, skip_head=skip, allow_partial=cfg.model.allow_partial)
        if log is not None and report is not None:
            log(str(report))
    apply_head(model, cfg, num_classes)
    return model


def load_initial_weights(model: nn.Module, path: str, skip_head: bool = False, allow_partial: bool = False):
    """Load a checkpoint (strict unless allow_partial); skip_head keeps the model's new classifier."""
    if not Path(path).is_file():
        raise CnnlabError(f"weights file not found: {path}")
    from cnnlab.models.weights import load_weights  # third-party checkpoints (key mapping, reports)

    return load_weights(model, path, allow_partial=allow_partial, skip_head=skip_head)


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


def resolve(cfg: Config, *, data: PreparedData, norm: Normalization, balance: BalancePlan, strategy: str,
            batch_size: int | str, epochs: int, out: str | Path, lr: float | None = None) -> Config:
    """The run's final config: `cfg` plus every decision, frozen. Resolving a resolved config changes nothing.

    `lr`: a learning rate decided for the run (the distributed scale_lr rule); once applied the rule is off.
    """
    final = cfg.copy()
    if lr is not None:
        final.train.lr, final.distributed.scale_lr = lr, False
    d = final.data
    d.image_size, d.channels = data.geometry.size[0], data.geometry.channels
    d.normalize, d.mean, d.std = norm.mode, norm.mean, norm.std
    b = final.balance
    b.methods, b.weights = list(balance.methods), balance.weights
    final.train.loss = balance.loss
    final.callbacks.monitor = concrete_monitor(balance.monitor, "val" in data.splits)
    final.transfer.strategy = strategy
    final.train.batch_size, final.train.epochs = batch_size, epochs
    final.out = str(out)
    pin_local_paths(final)
    final.freeze()
    return final


def concrete_monitor(monitor: str, has_val: bool) -> str:
    if monitor != "auto":
        return monitor
    return "val_accuracy" if has_val else "accuracy"


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


def build_loss(cfg: Config, num_classes: int) -> nn.Module:
    """The loss of cfg.train, with the class weights of cfg.balance."""
    b = cfg.balance
    weight = torch.tensor(b.weights, dtype=torch.float32) if b.weights is not None else None
    extra = {"gamma": b.focal_gamma} if cfg.train.loss == "focal" else {}
    return create_loss(cfg.train.loss, num_classes, label_smoothing=cfg.train.label_smoothing, weight=weight,
                       **extra)


def is_regression_loss(cfg: Config) -> bool:
    return cfg.train.loss in REGRESSION_LOSSES


def build_preprocess(cfg: Config, device: torch.device, channels_last: bool,
                     whitening: dict[str, torch.Tensor] | None = None) -> Preprocess:
    """The batch preprocessing of cfg.data.normalize (whitening: the run's fitted map, preprocess.safetensors)."""
    return Preprocess(cfg.data.normalize, cfg.data.mean, cfg.data.std, device, channels_last, whitening)


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


def build_trainer(cfg: Config, model: nn.Module, num_classes: int, device: torch.device, precision: str,
                  callbacks: list[Callback], console: Console, *, whitening: dict | None, augment: Any,
                  tplan: TransferPlan | None, checkpointer: RunCheckpointer | None, steps_per_epoch: int,
                  headline_metrics: list[str]) -> Trainer:
    """The Trainer of the model (or, for feature extraction, of its head on cached features) with its schedule."""
    loss_fn = build_loss(cfg, num_classes).to(device)
    common = {"num_classes": num_classes, "callbacks": callbacks, "top_k": cfg.train.top_k,
              "regression": is_regression_loss(cfg), "grad_clip": cfg.train.grad_clip, "console": console,
              "headline_metrics": headline_metrics}
    if tplan is not None and tplan.feature_splits is not None:  # only the head trains, on features in memory
        head = model.get_classifier().to(device)
        optimizer = build_optimizer(cfg, head, list(head.parameters()))
        return FeatureTrainer(model, head, loss_fn=loss_fn, optimizer=optimizer, preprocess=lambda x: x,
                              device=device, precision="fp32",
                              scheduler=build_scheduler(cfg, optimizer, steps_per_epoch), **common)
    channels_last = has_conv(model)
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(cfg, model, tplan.param_groups if tplan is not None else None)
    common["train_model"] = wrap_distributed(cfg, model, device)
    if checkpointer is not None:
        common["callbacks"] = [*callbacks, checkpointer]  # last: it saves every other callback's state
    return Trainer(model, loss_fn, optimizer, preprocess=build_preprocess(cfg, device, channels_last, whitening),
                   augment=augment, device=device, precision=precision,
                   scheduler=build_scheduler(cfg, optimizer, steps_per_epoch),
                   recovery=checkpointer.guard if checkpointer is not None else None,
                   events=checkpointer.events if checkpointer is not None else None, **common)


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


def build_predictor(cfg: Config, model: nn.Module, num_classes: int, device: torch.device, precision: str,
                    whitening: dict | None = None, decision_threshold: float | None = None) -> Predictor:
    """The Predictor of a trained full model on `device` (channels_last when it convolves)."""
    channels_last = has_conv(model)
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return Predictor(model, build_preprocess(cfg, device, channels_last, whitening), device, precision,
                     num_classes=num_classes, loss_fn=build_loss(cfg, num_classes).to(device), top_k=cfg.train.top_k,
                     regression=is_regression_loss(cfg), decision_threshold=decision_threshold)
