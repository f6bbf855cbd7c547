"""From a Config to everything a run needs: decoded splits, preprocessing, model, loss, optimizer, callbacks.

Shared by `fit` (new runs, resumed runs) and `load_run` (evaluate / predict from a run folder), so a run is
rebuilt from its config.yaml exactly as it was trained.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cnnlab.config import Config
from cnnlab.data.cache import decode_split_cached
from cnnlab.data.dataset import DecodedSplit, ImageGeometry, infer_geometry, set_max_image_pixels
from cnnlab.data.preprocess import (
    NORMALIZE_MODES,
    WHITEN_MODES,
    Preprocess,
    channel_stats_of,
    fit_whitening,
    stats_indices,
)
from cnnlab.data.readers import DataSource, load_source, skipped_summary
from cnnlab.data.stream import StreamedSplit, sample_images, stream_split
from cnnlab.errors import CnnlabError
from cnnlab.models import create_model
from cnnlab.train import callbacks as cbs
from cnnlab.train.losses import REGRESSION_LOSSES, create_loss


@dataclass
class PreparedData:
    source: DataSource
    geometry: ImageGeometry
    splits: dict[str, DecodedSplit | StreamedSplit]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    whitening: dict[str, torch.Tensor] | None = None  # the fitted zca / pca map (preprocess.safetensors)
    streamed: bool = False

    @property
    def class_names(self) -> list[str]:
        return self.source.class_names


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))


def prepare_data(cfg: Config, log=print) -> PreparedData:
    """Read and decode every split of cfg.data.source; resolves image size, channels, mean and std into cfg.

    Splits that fit data.memory_budget_mb are held in memory; larger data is streamed (cnnlab.data.stream).
    """
    d = cfg.data
    if d.val_source not in ("split", "test"):
        raise CnnlabError(f"data.val_source must be split or test, got '{d.val_source}'")
    use_test = d.val_source == "test"
    set_max_image_pixels(d.max_image_pixels)
    src = load_source(d.source, val_split=0.0 if use_test else d.val_split, seed=cfg.train.seed, images=d.images,
                      id_col=d.id_col, label_col=d.label_col, skip_missing=d.skip_missing)
    if use_test:  # as Keras's validation_data=(x_test, y_test): every train image is used; test is watched
        if "test" not in src.splits:
            raise CnnlabError(f"--set data.val_source=test needs a test split, and {d.source} has none")
        src.splits["val"] = src.splits.pop("test")
        log("note: validating on the test split (data.val_source=test): do not tune on it")
    channels = d.channels or (3 if cfg.model.pretrained else None)  # pretrained models expect RGB
    geom = infer_geometry(src, d.image_size, channels)
    h, w = geom.size
    total = sum(len(s) for s in src.splits.values()) * geom.channels * h * w / 2**20
    stream = total > d.memory_budget_mb
    if stream:
        log(f"the decoded images need {total:,.0f} MB, over data.memory_budget_mb={d.memory_budget_mb:,}: "
            "streaming them with a DataLoader")
        splits = {name: stream_split(src, split, geom, d.resize, d.cache) for name, split in src.splits.items()}
    else:
        splits = {name: decode_split_cached(src, split, geom, d.resize, d.cache, log)
                  for name, split in src.splits.items()}
    skipped = list(src.skipped) + [s for sp in splits.values() for s in sp.skipped]
    if skipped:
        log(f"warning: skipped {len(skipped)} files ({skipped_summary(skipped)}); listed in skipped.txt")
    d.image_size, d.channels = h, geom.channels
    whitening = fit_statistics(cfg, splits["train"])
    return PreparedData(src, geom, splits, skipped, whitening, stream)


def fit_statistics(cfg: Config, train) -> dict[str, torch.Tensor] | None:
    """Resolve data.mean / data.std from the training split; fit and return a whitening map if asked for."""
    d = cfg.data
    if d.normalize == "auto":  # a pretrained model expects the statistics it was trained with
        d.normalize = "model" if cfg.transfer.strategy != "none" else "standardize"
    if d.normalize not in NORMALIZE_MODES:
        raise CnnlabError(f"unknown data.normalize '{d.normalize}': use {', '.join(NORMALIZE_MODES)}")
    needs_sample = d.normalize in WHITEN_MODES or (d.normalize in ("standardize", "zero_center") and
                                                   (d.mean is None or d.std is None))
    per_image = d.channels * d.image_size * d.image_size
    sample = sample_images(train, stats_indices(len(train), image_values=per_image)) if needs_sample else None
    if d.normalize in WHITEN_MODES:
        return fit_whitening(sample[stats_indices(len(sample), 5_000)], d.normalize, d.whiten_eps)
    if d.mean is None or d.std is None:
        if d.normalize in ("standardize", "zero_center"):
            d.mean, d.std = channel_stats_of(sample)
            if d.normalize == "zero_center":
                d.std = [1.0] * d.channels
        elif d.normalize in ("scale", "per_image"):
            d.mean, d.std = [0.0] * d.channels, [1.0] * d.channels
    return None


def build_model(cfg: Config, num_classes: int, log=None) -> nn.Module:
    """create_model from cfg.model, plus --weights and a transfer head; resolves model-mean/std normalisation."""
    from cnnlab.transfer import apply_head, is_transfer

    d = cfg.data
    model = create_model(cfg.model.name, num_classes, in_chans=d.channels, input_size=(d.image_size, d.image_size),
                         pretrained=cfg.model.pretrained, **cfg.model.kwargs)
    if cfg.model.weights:
        skip = cfg.model.skip_head if cfg.model.skip_head is not None else is_transfer(cfg)
        report = load_initial_weights(model, cfg.model.weights, skip_head=skip, allow_partial=cfg.model.allow_partial)
        if log is not None and report is not None:
            log(str(report))
    apply_head(model, cfg, num_classes)
    if d.normalize == "model" and (d.mean is None or d.std is None):
        mcfg = getattr(model, "default_cfg", {}) or {}
        mean, std = mcfg.get("mean", (0.485, 0.456, 0.406)), mcfg.get("std", (0.229, 0.224, 0.225))
        d.mean = [float(v) for v in mean][: d.channels] if d.channels == 3 else [float(np.mean(mean))]
        d.std = [float(v) for v in std][: d.channels] if d.channels == 3 else [float(np.mean(std))]
    return model


def load_initial_weights(model: nn.Module, path: str, skip_head: bool = False, allow_partial: bool = False):
    """Load a checkpoint (strict unless allow_partial); skip_head keeps the model's new classifier."""
    if not Path(path).is_file():
        raise CnnlabError(f"weights file not found: {path}")
    try:
        from cnnlab.models.weights import load_weights  # third-party checkpoints (key mapping, reports)
    except ImportError:
        from cnnlab.train.checkpoint import load_weights_file

        model.load_state_dict(load_weights_file(path))
        return None
    return load_weights(model, path, allow_partial=allow_partial, skip_head=skip_head)


def build_loss(cfg: Config, num_classes: int) -> nn.Module:
    """The loss from cfg.train; class weights from cfg.balance.weights (resolved by balance.plan_balance)."""
    b = cfg.balance
    weight = torch.tensor(b.weights, dtype=torch.float32) if b.weights is not None else None
    extra = {"gamma": b.focal_gamma} if cfg.train.loss == "focal" else {}
    return create_loss(cfg.train.loss, num_classes, label_smoothing=cfg.train.label_smoothing, weight=weight,
                       **extra)


def is_regression_loss(cfg: Config) -> bool:
    return cfg.train.loss in REGRESSION_LOSSES


def build_normalize(cfg: Config, device: torch.device, channels_last: bool,
                    whitening: dict[str, torch.Tensor] | None = None) -> Preprocess:
    """The batch preprocessing of cfg.data.normalize (whitening: the run's fitted map, preprocess.safetensors)."""
    return Preprocess(cfg.data.normalize, cfg.data.mean, cfg.data.std, device, channels_last, whitening)


def has_conv(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def resolve_monitor(cfg: Config, has_val: bool) -> str:
    if cfg.callbacks.monitor != "auto":
        return cfg.callbacks.monitor
    return "val_accuracy" if has_val else "accuracy"


def build_callbacks(cfg: Config, run_dir: Path, has_val: bool, resume: bool = False) -> list[cbs.Callback]:
    """The callbacks the config asks for, in a fixed order (their states are saved in that order)."""
    c = cfg.callbacks
    monitor = resolve_monitor(cfg, has_val)
    out: list[cbs.Callback] = [cbs.ProgressBar(quiet=cfg.verbose != 1)]
    if c.checkpoint:
        out.append(cbs.ModelCheckpoint(run_dir / "best.safetensors", monitor=monitor))
    if c.early_stopping is not None:
        out.append(cbs.EarlyStopping(monitor=monitor, patience=c.early_stopping,
                                     restore_best_weights=c.restore_best))
    if c.reduce_lr is not None:
        out.append(cbs.ReduceLROnPlateau(monitor=monitor, factor=c.reduce_lr_factor, patience=c.reduce_lr,
                                         min_lr=c.min_lr))
    if c.target is not None:
        out.append(cbs.StopOnTarget(c.target, monitor=monitor))
    if c.csv:
        out.append(cbs.CSVLogger(run_dir / "metrics.csv", append=resume))
    if c.tensorboard:
        out.append(cbs.TensorBoard(run_dir / "tensorboard"))
    return out
