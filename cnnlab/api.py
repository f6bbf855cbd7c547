"""The Python API: fit, load_run, evaluate, predict, inspect. The CLI is a thin layer over these.

    run = cnnlab.fit("digits", model="seed_cnn", epochs=5)
    run.evaluate()                       # val / test metrics with a confusion matrix
    run.predict(["img1.png", "folder/"]) # labels and probabilities
    run = cnnlab.load_run("runs/...")    # everything back from a run folder alone
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.metadata
import json
import platform
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch
from rich.console import Console
from torch import nn

from cnnlab import __version__
from cnnlab.config import Config, apply_overrides, config_from_dict, load_config, save_config, set_value
from cnnlab.data import balance
from cnnlab.data.augment import build_augmenter
from cnnlab.data.augment import describe as describe_augment
from cnnlab.data.dataset import DecodedSplit, ImageGeometry, decode_image
from cnnlab.data.loader import TensorBatches
from cnnlab.data.preprocess import load_preprocess, save_preprocess
from cnnlab.data.readers import list_images, load_source
from cnnlab.data.stream import make_batches
from cnnlab.errors import CnnlabError
from cnnlab.models.layers import weight_decay_groups
from cnnlab.models.optimize import pool_before_activation
from cnnlab.models.summary import format_summary, summarize
from cnnlab.prepare import (
    build_callbacks,
    build_loss,
    build_model,
    build_normalize,
    has_conv,
    is_regression_loss,
    prepare_data,
    resolve_monitor,
    seed_everything,
)
from cnnlab.train.autosave import attach_checkpointer
from cnnlab.train.callbacks import Callback
from cnnlab.train.checkpoint import load_weights_file, save_weights
from cnnlab.train.loop import Trainer, resolve_device, resolve_precision
from cnnlab.train.metrics import per_class_report
from cnnlab.train.optim import create_optimizer, create_scheduler, resolve_batch_size, resolve_epochs
from cnnlab.transfer import (
    fit_logreg,
    is_transfer,
    make_head_trainer,
    setup_transfer,
    validate_transfer,
    write_transfer_record,
)

# Short keyword names accepted by fit(...) and the CLI, mapped to config fields.
SHORT_NAMES = {
    "data": "data.source", "val_split": "data.val_split", "image_size": "data.image_size",
    "channels": "data.channels", "images": "data.images", "id_col": "data.id_col", "label_col": "data.label_col",
    "normalize": "data.normalize", "augment": "augment.preset", "model": "model.name",
    "model_kwargs": "model.kwargs", "weights": "model.weights",
    "pretrained": "model.pretrained", "epochs": "train.epochs", "batch_size": "train.batch_size",
    "optimizer": "train.optimizer", "lr": "train.lr", "momentum": "train.momentum", "nesterov": "train.nesterov",
    "weight_decay": "train.weight_decay", "schedule": "train.schedule", "warmup_epochs": "train.warmup_epochs",
    "loss": "train.loss", "label_smoothing": "train.label_smoothing", "seed": "train.seed",
    "device": "train.device", "precision": "train.precision", "monitor": "callbacks.monitor",
    "early_stopping": "callbacks.early_stopping", "reduce_lr": "callbacks.reduce_lr", "target": "callbacks.target",
    "tensorboard": "callbacks.tensorboard", "balance": "balance.methods", "out": "out", "verbose": "verbose",
    "checkpoint_every": "train.checkpoint_every_steps",
    "strategy": "transfer.strategy", "unfreeze": "transfer.unfreeze", "head": "transfer.head",
    "skip_head": "model.skip_head", "allow_partial": "model.allow_partial",
}


def build_config(data: str | None = None, config: str | Path | Config | dict | None = None,
                 overrides: list[str] | None = None, **kwargs: Any) -> Config:
    """Defaults < config (file, dict or Config) < keyword arguments < dotted overrides."""
    if isinstance(config, Config):
        cfg = config_from_dict(config.to_dict())  # a copy: the caller's Config is not changed
    elif isinstance(config, dict):
        cfg = config_from_dict(config)
    elif config is not None:
        cfg = load_config(config)
    else:
        cfg = Config()
    if data is not None:
        cfg.data.source = str(data)
    for key, value in kwargs.items():
        if value is None:
            continue
        if key == "quiet":  # --quiet: epoch lines for logs, no progress bar
            key, value = "verbose", 2 if value else 1
        target = SHORT_NAMES.get(key, key.replace("__", "."))
        set_value(cfg, target, value)
    apply_overrides(cfg, overrides or [])
    return cfg


# ------------------------------------------------------------------------------------------------------------
# run folders


def _default_run_dir(model_name: str) -> Path:
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(model_name).stem if model_name.endswith(".yaml") else model_name)
    base = Path("runs") / f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-{stem}"
    path, n = base, 2
    while path.exists():
        path, n = Path(f"{base}-{n}"), n + 1
    return path


def create_run_dir(out: str | None, model_name: str) -> Path:
    """A new, empty run folder. An existing folder holding a run or other files is refused, never overwritten."""
    path = Path(out) if out else _default_run_dir(model_name)
    if path.exists():
        if not path.is_dir():
            raise CnnlabError(f"--out {path} is a file; choose a folder path")
        if (path / "config.yaml").exists():
            raise CnnlabError(f"{path} already holds a run; choose another --out, or continue it with "
                              f"`cnnlab train --resume {path}`")
        if any(path.iterdir()):
            raise CnnlabError(f"{path} is not empty; choose another --out so nothing in it is overwritten")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CnnlabError(f"cannot create the run folder {path}: {e.strerror}") from None
    return path


def _dist_version(name: str) -> str:
    """An installed package's version from its metadata, without importing it (timm and torchvision take seconds)."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def environment_info(device: torch.device, precision: str) -> dict[str, Any]:
    return {
        "cnnlab": __version__, "python": platform.python_version(), "torch": str(torch.__version__),
        "torchvision": _dist_version("torchvision"), "timm": _dist_version("timm"), "numpy": np.__version__,
        "platform": platform.platform(), "device": str(device), "precision": precision,
        "threads": torch.get_num_threads(), "command": " ".join(sys.argv),
        "started": datetime.now().isoformat(timespec="seconds"),
    }


def _write_skipped(run_dir: Path, skipped: list[tuple[str, str]]) -> None:
    if skipped:
        lines = [f"{name}\t{reason}" for name, reason in skipped]
        (run_dir / "skipped.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


# ------------------------------------------------------------------------------------------------------------


@dataclass
class Run:
    """A trained model with its run folder, config, classes, history and metrics."""

    dir: Path | None
    config: Config
    class_names: list[str]
    model: nn.Module
    trainer: Trainer
    history: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def geometry(self) -> ImageGeometry:
        d = self.config.data
        return ImageGeometry((d.image_size, d.image_size), d.channels)

    def evaluate(self, data: str | None = None, split: str = "auto") -> dict[str, Any]:
        return evaluate(self, data, split)

    def predict(self, inputs: list[str] | str, csv_path: str | None = None) -> list[dict[str, Any]]:
        return predict(self, inputs, csv_path)


def _make_trainer(cfg: Config, model: nn.Module, num_classes: int, device: torch.device, precision: str,
                  callbacks: list[Callback], console: Console, whitening: dict | None = None,
                  augment=None, params: list | None = None, inference: bool = False) -> Trainer:
    """The Trainer of `model` on `device`; `inference` (evaluate / predict from a run folder) builds no optimizer:
    creating a torch optimizer imports torch._dynamo, about 2 s of every evaluate / predict command."""
    channels_last = has_conv(model)
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if params is None:  # decay on weights only, unless asked (models.layers.weight_decay_groups)
        params = (weight_decay_groups(model, cfg.train.weight_decay)
                  if cfg.train.weight_decay > 0 and not cfg.train.decay_bias_and_norm
                  else [p for p in model.parameters() if p.requires_grad])
    optimizer = None if inference else create_optimizer(cfg.train.optimizer, params, cfg.train.lr,
                                                         cfg.train.momentum, cfg.train.nesterov,
                                                         cfg.train.weight_decay)
    return Trainer(model, build_loss(cfg, num_classes).to(device), optimizer, num_classes=num_classes,
                   preprocess=build_normalize(cfg, device, channels_last, whitening), augment=augment,
                   device=device, precision=precision,
                   callbacks=callbacks, top_k=cfg.train.top_k, regression=is_regression_loss(cfg),
                   grad_clip=cfg.train.grad_clip, console=console)


def fit(data: str | None = None, *, config: str | Path | Config | dict | None = None,
        callbacks: list[Callback] | None = None, overrides: list[str] | None = None,
        resume: str | Path | None = None, **kwargs: Any) -> Run:
    """Train a model on `data` and write a run folder.

    Args:
        data: DATA as the CLI takes it (folder, zip, csv, npz, IDX folder, builtin name).
        config: a YAML file, dict or Config to start from.
        callbacks: extra Callback objects (beside those the config asks for).
        overrides: dotted `section.key=value` strings.
        resume: a run folder to continue from its last checkpoint instead (see cnnlab.resume.resume).
        **kwargs: short names (model, epochs, batch_size, lr, optimizer, loss, seed, out, quiet, ...) or any
            config field as section__key.

    Returns:
        The Run: model, history, metrics and run folder.
    """
    if resume is not None:
        from cnnlab.resume import resume as resume_run

        return resume_run(resume, callbacks=callbacks, **kwargs)
    cfg = build_config(data, config, overrides, **kwargs)
    _pin_local_paths(cfg)
    validate_transfer(cfg)  # before any decoding: a wrong strategy / head fails at once
    console = Console(highlight=False, quiet=cfg.verbose == 0)
    device = resolve_device(cfg.train.device)
    precision = resolve_precision(cfg.train.precision, device)
    run_dir = create_run_dir(cfg.out, cfg.model.name)
    cfg.out = str(run_dir)
    try:
        return _fit_in(cfg, run_dir, device, precision, console, callbacks or [])
    except BaseException:
        if not any(run_dir.iterdir()):
            run_dir.rmdir()  # nothing was written: leave no empty folder behind
        raise


def _pin_local_paths(cfg: Config) -> None:
    """Paths that exist become absolute, so the run's config.yaml resumes and re-runs from any directory; builtin
    names (digits, mnist, ...) and paths that do not exist (their error comes later, as typed) stay as given."""
    for section, key in (("data", "source"), ("data", "images"), ("model", "weights")):
        holder = getattr(cfg, section)
        value = getattr(holder, key)
        if isinstance(value, str) and value:
            path = Path(value).expanduser()
            if path.exists():
                setattr(holder, key, str(path.resolve()))


@dataclass
class _Loops:
    """What one training run iterates over: the trainer and its train / val batches (pixels or cached features)."""

    trainer: Trainer
    train: Any
    val: Any
    features: Any  # the cached bottleneck features of feature extraction, else None
    tplan: Any  # the transfer plan, else None


def _fit_in(cfg: Config, run_dir: Path, device: torch.device, precision: str, console: Console,
            extra_callbacks: list[Callback], resume_state: dict | None = None) -> Run:
    """Prepare data, model and trainer from `cfg`, train (from the start, or from `resume_state`), finish."""
    log = lambda m: console.print(m, markup=False, soft_wrap=True)  # noqa: E731
    seed_everything(cfg.train.seed)
    prepared = prepare_data(cfg, log)
    plan = balance.plan_balance(cfg, prepared.splits["train"].y, len(prepared.class_names),
                                "val" in prepared.splits, log)
    training = _with_synthetic(cfg, prepared, plan, log)  # prepared, or its copy with SMOTE images in train
    seed_everything(cfg.train.seed)
    model = build_model(cfg, len(prepared.class_names), log)
    loops = _build_loops(cfg, model, training, plan, run_dir, device, precision, console, extra_callbacks,
                         resume_state is not None, log)
    meta = environment_info(device, precision)
    summary_text = format_summary(summarize(model, (cfg.data.channels, cfg.data.image_size, cfg.data.image_size),
                                            device=device), title=f"Model: {cfg.model.name}")
    if loops.features is None:  # after the summary, which shows the model as defined
        pool_before_activation(model)
    if resume_state is None:
        _write_run_files(run_dir, cfg, meta, prepared.class_names, summary_text, prepared)
    counts = ", ".join(f"{k} {len(v)}" for k, v in prepared.splits.items())
    log(f"cnnlab {__version__}: {cfg.model.name} on {prepared.source.name} ({len(prepared.class_names)} classes, "
        f"{cfg.data.channels}x{cfg.data.image_size}x{cfg.data.image_size}, {counts}) on {device} ({precision}); "
        f"run folder {run_dir}")
    t0 = time.perf_counter()
    _train(cfg, model, loops, run_dir, resume_state)
    run = Run(run_dir, cfg, prepared.class_names, model, loops.trainer, loops.trainer.history, meta=meta)
    run.metrics = _final_metrics(run, loops.features or prepared, loops.val is not None, time.perf_counter() - t0)
    run.metrics["balance"] = plan.record()
    (run_dir / "metrics.json").write_text(json.dumps(run.metrics, indent=2), encoding="utf-8")
    if loops.tplan is not None:
        write_transfer_record(run_dir, loops.tplan, run.metrics)
        if loops.features is not None:  # the returned Run predicts from images with the full model
            run.trainer = _make_trainer(cfg, model, len(prepared.class_names), device, precision, [], console,
                                        prepared.whitening)
    _print_final(run, log)
    return run


def _with_synthetic(cfg: Config, prepared: Any, plan: Any, log: Callable[[str], None]) -> Any:
    """SMOTE-family on pixels: the synthetic images join the in-memory train split."""
    if plan.synthetic is None:
        return prepared
    train_split = prepared.splits["train"]
    if not isinstance(train_split, DecodedSplit):
        raise CnnlabError(f"{plan.synthetic} on pixels needs the train split in memory; it is streamed because "
                          "it is over data.memory_budget_mb: use a smaller --image-size or another --balance")
    x, y = balance.apply_synthetic(plan, train_split.x, train_split.y, cfg.balance.smote_k, cfg.train.seed, log)
    return dataclasses.replace(prepared, splits={**prepared.splits, "train": DecodedSplit(x, y, [])})


def _build_loops(cfg: Config, model: nn.Module, prepared: Any, plan: Any, run_dir: Path, device: torch.device,
                 precision: str, console: Console, extra_callbacks: list[Callback], resuming: bool,
                 log: Callable[[str], None]) -> _Loops:
    """Transfer setup, trainer, batches and schedule; resolves the auto batch size and epochs into cfg."""
    num_classes = len(prepared.class_names)
    # pretrained weights: freeze / group LRs, or train a head on cached bottleneck features
    tplan = setup_transfer(cfg, model, prepared, device, precision, log) if is_transfer(cfg) else None
    features = tplan.feature_data if tplan is not None else None
    strategy = tplan.strategy if tplan is not None else None
    cfg.train.batch_size = resolve_batch_size(cfg.train.batch_size, strategy)
    splits = (features or prepared).splits
    train_split, val_split = splits["train"], splits.get("val")
    callbacks = build_callbacks(cfg, run_dir, val_split is not None, resume=resuming) + extra_callbacks
    augmenter = build_augmenter(cfg.augment, cfg.train.seed, num_classes) if features is None else None
    if features is not None:  # only the head trains, on features in memory
        trainer = make_head_trainer(cfg, model, num_classes, device, callbacks, console)
    else:
        trainer = _make_trainer(cfg, model, num_classes, device, precision,
                                callbacks + (tplan.callbacks if tplan else []), console, prepared.whitening,
                                augmenter.mix if augmenter is not None and augmenter.mixes else None,
                                tplan.param_groups if tplan else None)
    trainer.headline_metrics = balance.headline_metrics(plan, num_classes, val_split is not None)
    sampler = (balance.create_sampler(plan.sampler, train_split.y, num_classes, cfg.balance.epoch_samples)
               if plan.sampler else None)
    workers = cfg.data.workers
    train = make_batches(train_split, cfg.train.batch_size, True, cfg.train.seed, device, workers, sampler=sampler)
    if augmenter is not None:
        train = augmenter.wrap(train)
        log(f"augmentation {describe_augment(cfg.augment)}")
    val = (make_batches(val_split, cfg.train.eval_batch_size, False, 0, device, workers)
           if val_split is not None else None)
    cfg.train.epochs = resolve_epochs(cfg.train.epochs, len(train), strategy)
    trainer.scheduler = create_scheduler(cfg.train.schedule, trainer.optimizer, cfg.train.epochs * len(train),
                                         len(train), cfg.train.warmup_epochs, step_size=cfg.train.step_size,
                                         gamma=cfg.train.gamma)
    return _Loops(trainer, train, val, features, tplan)


def _train(cfg: Config, model: nn.Module, loops: _Loops, run_dir: Path, resume_state: dict | None) -> None:
    """The epochs: a head on cached features (no checkpointer: its epochs take milliseconds), or the full model
    under the crash-safe checkpointer (resume, Ctrl-C, NaN rollback)."""
    t, trainer = cfg.train, loops.trainer
    if loops.features is not None:
        if cfg.transfer.head == "logreg":
            fit_logreg(trainer, loops.train, loops.val, run_dir / "best.safetensors")
        else:
            trainer.fit(loops.train, loops.val, t.epochs)
        save_weights(model, run_dir / "last.safetensors")
        return
    checkpointer = attach_checkpointer(trainer, run_dir, t.checkpoint_every_steps, t.nan_policy, t.nan_retries,
                                       t.nan_lr_factor)
    start_epoch, start_step = checkpointer.start(resume_state, t.epochs)
    with checkpointer.protect():  # Ctrl-C saves and stops; a full disk is one clear line
        trainer.fit(loops.train, loops.val, t.epochs, start_epoch, start_step, on_epoch_saved=checkpointer.save_epoch)


def training_state(trainer: Trainer, epoch: int) -> dict[str, Any]:
    """The full state at the end of epoch `epoch` (0-based): see cnnlab.train.state.capture_state."""
    from cnnlab.train.state import capture_state

    return capture_state(trainer, epoch + 1, 0)


def _write_run_files(run_dir: Path, cfg: Config, meta: dict, classes: list[str], summary_text: str,
                     prepared) -> None:
    extra = {"meta": meta, "resolved": {"num_classes": len(classes), "data_kind": prepared.source.kind,
                                        "label_col": prepared.source.label_col,
                                        "counts": {s: len(v) for s, v in prepared.splits.items()}}}
    save_config(cfg, run_dir / "config.yaml", extra)
    (run_dir / "classes.json").write_text(json.dumps(classes, indent=2, ensure_ascii=False), encoding="utf-8")
    (run_dir / "summary.txt").write_text(summary_text + "\n", encoding="utf-8")
    _write_skipped(run_dir, prepared.skipped)
    save_preprocess(prepared.whitening, run_dir)


def _final_metrics(run: Run, prepared, has_val: bool, wall: float) -> dict[str, Any]:
    """Final-epoch logs, the best epoch on the monitor, and val / test metrics of the best weights."""
    cfg, trainer = run.config, run.trainer
    history = run.history
    monitor = resolve_monitor(cfg, has_val)
    best_path = run.dir / "best.safetensors"
    if best_path.exists():
        run.model.load_state_dict(load_weights_file(best_path))
    out: dict[str, Any] = {"monitor": monitor, "epochs_run": len(history),
                           "train_time_s": round(sum(h.get("time", 0) for h in history), 3),
                           "wall_time_s": round(wall, 3), "final": history[-1] if history else {}}
    values = [h.get(monitor) for h in history]
    if any(v is not None for v in values):
        from cnnlab.train.callbacks import resolve_mode

        pick = max if resolve_mode(monitor, "auto") == "max" else min
        best_epoch = pick((i for i, v in enumerate(values) if v is not None), key=lambda i: values[i])
        out["best"] = {"epoch": best_epoch + 1, monitor: values[best_epoch]}
    if "threshold" in cfg.balance.methods:
        out["threshold"] = _pick_threshold(trainer, prepared.splits["val"], cfg.train.eval_batch_size)
    for split in ("val", "test"):
        if split in prepared.splits:
            data = prepared.splits[split]
            batches = make_batches(data, cfg.train.eval_batch_size, False, 0, trainer.device, cfg.data.workers)
            logs, cm = trainer.evaluate(batches, prefix="")
            out[split] = {**logs, "confusion_matrix": cm}
    return out


def _pick_threshold(trainer: Trainer, val, batch_size: int) -> dict[str, Any]:
    """Two classes: the threshold on P(class 1) maximizing val balanced accuracy; used from now on by the trainer."""
    p = trainer.predict_proba(val.x, batch_size)[:, 1].numpy()
    value, score = balance.select_threshold(val.y.numpy(), p)
    trainer.decision_threshold = value
    return {"value": value, "chosen_on": "val", "criterion": "balanced_accuracy", "val_balanced_accuracy": score}


def _print_final(run: Run, log) -> None:
    m = run.metrics
    if "threshold" in m:
        t = m["threshold"]
        log(f"balance: decision threshold P({run.class_names[1]}) >= {t['value']:.4f} (val balanced accuracy "
            f"{t['val_balanced_accuracy']:.4f}); evaluate and predict use it")
    keys = ["accuracy"] + (["balanced_accuracy", "f1"] if m.get("balance", {}).get("imbalanced") else [])
    parts = [f"{s} " + " ".join(f"{k} {m[s][k]:.4f}" for k in keys + ["roc_auc", "pr_auc"] if k in m[s])
             for s in ("val", "test") if s in m]
    log(f"Done in {m['wall_time_s']:.1f}s ({m['epochs_run']} epochs). Best weights: " + ", ".join(parts))
    log(f"Run folder: {run.dir}")


# ------------------------------------------------------------------------------------------------------------
# loading runs, evaluate, predict


def load_run(path: str | Path, weights: str = "best", device: str | None = None) -> Run:
    """Rebuild a trained model from its run folder (config.yaml, classes.json, best or last weights)."""
    run_dir = Path(path)
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise CnnlabError(f"{run_dir} is not a cnnlab run folder (no config.yaml); pass the folder `cnnlab train` "
                          "printed")
    import yaml

    raw = yaml.safe_load(cfg_path.read_text(encoding="utf-8")) or {}
    cfg = config_from_dict(raw)
    classes = json.loads((run_dir / "classes.json").read_text(encoding="utf-8"))
    cfg.verbose = 0
    dev = resolve_device(device or cfg.train.device)
    precision = resolve_precision(cfg.train.precision, dev)
    cfg.model.weights, cfg.model.pretrained = None, False  # the run's own weights are loaded below
    model = build_model(cfg, len(classes))
    candidates = [run_dir / f"{weights}.safetensors", run_dir / "last.safetensors"]
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise CnnlabError(f"{run_dir} has no weights ({weights}.safetensors or last.safetensors)")
    model.load_state_dict(load_weights_file(found))
    pool_before_activation(model)  # exact, and faster (cnnlab.models.optimize)
    trainer = _make_trainer(cfg, model, len(classes), dev, precision, [], Console(quiet=True),
                            load_preprocess(run_dir), inference=True)
    history: list[dict[str, Any]] = []
    if (run_dir / "metrics.json").is_file():
        metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    else:
        metrics = {}
    trainer.decision_threshold = (metrics.get("threshold") or {}).get("value")
    return Run(run_dir, cfg, classes, model, trainer, history, metrics, raw.get("meta", {}))


def _same_source(a: str, b: str) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return a == b


def evaluate(run: Run | str | Path, data: str | None = None, split: str = "auto") -> dict[str, Any]:
    """Metrics, confusion matrix and per-class report of `run` on a split of `data`.

    split "auto": the test split if the data has one; else, for the data the run was trained on, its val split
    (recreated with the run's seed); else every image.
    """
    if not isinstance(run, Run):
        run = load_run(run)
    cfg = run.config
    data = data or cfg.data.source
    same = _same_source(data, cfg.data.source)
    d = cfg.data
    opts = {"images": d.images, "id_col": d.id_col, "label_col": d.label_col} if same else {}
    probe = load_source(data, val_split=0.0, **opts)
    if split == "auto":
        split = "test" if "test" in probe.splits else ("val" if (same or "val" in probe.splits) else "train")
    src = load_source(data, val_split=d.val_split if same else 0.0, seed=cfg.train.seed, **opts) \
        if split == "val" and "val" not in probe.splits else probe
    if split not in src.splits:
        raise CnnlabError(f"{data} has no '{split}' split (it has {', '.join(src.splits)})")
    labels = _map_labels(src.class_names, run.class_names, data)
    from cnnlab.data.dataset import decode_split

    decoded = decode_split(src, src.splits[split], run.geometry, d.resize)
    y = torch.from_numpy(labels[decoded.y.numpy()])
    dev = run.trainer.device
    batches = TensorBatches(decoded.x.to(dev), y.to(dev), cfg.train.eval_batch_size, False)
    logs, cm = run.trainer.evaluate(batches, prefix="")
    if run.trainer.decision_threshold is not None:
        logs["decision_threshold"] = run.trainer.decision_threshold
    return {"data": str(data), "split": split, "count": len(y), **logs, "confusion_matrix": cm,
            "per_class": per_class_report(cm, run.class_names), "skipped": len(decoded.skipped)}


def _map_labels(data_classes: list[str], run_classes: list[str], data: str) -> np.ndarray:
    unknown = [c for c in data_classes if c not in run_classes]
    if unknown:
        raise CnnlabError(f"{data} has classes the model was not trained on: {', '.join(unknown[:5])} "
                          f"(the model knows {', '.join(run_classes[:10])})")
    return np.array([run_classes.index(c) for c in data_classes], dtype=np.int64)


def _collect_inputs(inputs: list[str]) -> list[tuple[str, Any]]:
    """(id, reader) for each image in files, folders (recursive) and zip archives."""
    return list_images(inputs)


def predict(run: Run | str | Path, inputs: list[str] | str, csv_path: str | None = None,
            id_format: str = "auto") -> list[dict[str, Any]]:
    """Predicted class and probabilities for each image; optionally a Kaggle-style CSV (id, label, probs).

    id_format: "name" (file name, as Kaggle ids usually are), "stem" (without extension), "path" (relative
    path), or "auto" (stem when the run was trained from a CSV whose ids have no extension, else name).
    """
    if not isinstance(run, Run):
        run = load_run(run)
    if isinstance(inputs, (str, Path)):
        inputs = [str(inputs)]
    items = _collect_inputs(list(inputs))
    geom = run.geometry
    arrays, ids, skipped = [], [], []
    for ident, read in items:
        try:
            arrays.append(decode_image(read(), geom.channels, geom.size[0], run.config.data.resize))
            ids.append(ident)
        except Exception as e:  # noqa: BLE001  (a bad image is reported, never fatal)
            skipped.append((ident, f"{type(e).__name__}"))
    if not arrays:
        raise CnnlabError(f"none of the {len(items)} images could be decoded")
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    probs = run.trainer.predict_proba(x, run.config.train.eval_batch_size)
    rows = []
    for ident, p in zip(ids, probs):
        k = int(run.trainer.decide(p[None])[0])
        rows.append({"id": _format_id(ident, id_format, run), "label": run.class_names[k],
                     "confidence": float(p[k]), "probabilities": dict(zip(run.class_names, map(float, p)))})
    if csv_path:
        write_predictions_csv(rows, csv_path, run)
    for ident, reason in skipped:
        print(f"warning: skipped {ident} ({reason})", file=sys.stderr)
    return rows


def _format_id(ident: str, fmt: str, run: Run) -> str:
    if fmt == "auto":
        fmt = "name"
    if fmt == "name":
        return PurePosixPath(ident).name
    if fmt == "stem":
        return PurePosixPath(ident).stem
    return ident


def write_predictions_csv(rows: list[dict[str, Any]], path: str, run: Run) -> None:
    """Columns: id, the label column (named as in the training CSV, else 'label'), then prob_<class> each."""
    label_col = _run_label_col(run)
    out = Path(path)
    with open(out, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["id", label_col, *(f"prob_{c}" for c in run.class_names)])
        for r in rows:
            writer.writerow([r["id"], r["label"], *(f"{r['probabilities'][c]:.6f}" for c in run.class_names)])


def _run_label_col(run: Run) -> str:
    if run.dir is not None and (run.dir / "config.yaml").is_file():
        import yaml

        raw = yaml.safe_load((run.dir / "config.yaml").read_text(encoding="utf-8")) or {}
        col = (raw.get("resolved") or {}).get("label_col")
        if col:
            return str(col)
    return run.config.data.label_col or "label"
