"""`doctor(data, **fit keywords)`: prepare the data and model as `cnnlab train` would, run the checks, write
doctor.json and the plots, and return the DoctorReport."""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console
from torch import nn

from cnnlab.config import Config, build_config
from cnnlab.data.dataset import ImageGeometry
from cnnlab.data.stream import sample_images
from cnnlab.doctor import plots
from cnnlab.doctor.budget import BUDGET_S, EARLY_PIXELS, FIXED_S, QUICK_BUDGET_S, Plan, fit_plan, progress
from cnnlab.doctor.checks import OK, DoctorReport, format_row, print_report
from cnnlab.doctor.data import data_checks, from_scratch
from cnnlab.doctor.probes import (
    ADAPTIVE_HIGH,
    UPDATE_BAND,
    activation_stats,
    gradient_checks,
    init_checks,
    initial_loss_check,
)
from cnnlab.doctor.training import lr_check, lr_find, overfit_check, probe
from cnnlab.errors import CnnlabError
from cnnlab.models.simple import count_parameters
from cnnlab.prepare import PreparedData
from cnnlab.recipe import Setup, build_optimizer, seed_everything, set_up
from cnnlab.runs import RunDir
from cnnlab.tasks import Task
from cnnlab.tasks.classification import ClassificationTask
from cnnlab.train import dist
from cnnlab.train.optim import resolve_lr
from cnnlab.train.trainer import resolve_device

FLOAT_BUDGET = 50_000_000  # preprocessed float values of the subsets held at once (200 MB)


def doctor(data: str | None = None, *, config: Any = None, overrides: list[str] | None = None,
           module: nn.Module | None = None, quick: bool = False, console: Console | None = None,
           **kwargs: Any) -> DoctorReport:
    """Run the learning-process checks on `data` with the model and options `fit` would use.

    `module`: an nn.Module to check instead of the configured model. With `out=DIR` doctor.json and the plots are
    written there. Returns the DoctorReport (`.checks`, `.failed`, `.exit_code`, `.to_json()`)."""
    kwargs.pop("quiet", None)
    cfg = build_config(data, config, overrides, caller="cnnlab doctor", **kwargs)
    folder = output_folder(cfg.out) if cfg.out is not None else None  # refused before any work
    report = diagnose(cfg, module=module, quick=quick, console=console)
    if folder is not None:
        write_outputs(report, folder, set_lr(cfg))
    return report


def set_lr(cfg: Config) -> float:
    if cfg.train.lr == "find":
        raise CnnlabError("cnnlab doctor runs the lr range test itself: drop --lr find (or give a number to check)")
    return float(resolve_lr(cfg.train.lr, cfg.train.optimizer))


def subset(data: PreparedData, split: str, n: int, preprocess) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Up to n images of a split drawn at random (seeded), preprocessed (float) with their labels, in random order.

    Read in index order, then shuffled: folder sources list their images class by class, and the checks take the
    first 64 / 128 rows (an overfit test on one class would pass by predicting it)."""
    if split not in data.splits:
        return None
    s = data.splits[split]
    c, (h, w) = data.geometry.channels, data.geometry.size
    n = max(64, min(n, len(s), FLOAT_BUDGET // (c * h * w)))
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(s), generator=g)[:n].sort().values
    order = torch.randperm(len(idx), generator=g)
    return preprocess(sample_images(s, idx)).float()[order].contiguous(), s.y.index_select(0, idx[order])


def make_optimizer_fn(cfg: Config):
    return lambda net: build_optimizer(cfg, net)


def diagnose(cfg: Config, module: nn.Module | None = None, quick: bool = False,
             console: Console | None = None) -> DoctorReport:
    """Prepare data and model as `cnnlab train` would and run the checks; each row is printed as soon as its check
    is done, the training checks get the time left of the budget (cnnlab.doctor.budget)."""
    console = console or Console(highlight=False, quiet=cfg.verbose == 0)
    log = lambda m: console.print(m, markup=False, soft_wrap=True)  # noqa: E731
    t0 = time.perf_counter()
    setup = set_up(cfg, log, module=module)
    if not isinstance(setup.task, ClassificationTask):
        raise CnnlabError(f"cnnlab doctor checks classifiers; the {setup.task.name or cfg.task} task has no checks "
                          "yet: train it with --no-checks")
    data, num_classes = setup.data, len(setup.data.class_names)
    model = setup.model.to(setup.device).float()
    preprocess = setup.preprocess()
    report = DoctorReport(listener=lambda c: log(format_row(c)))
    checks, report.details["inputs"] = data_checks(cfg, data, count_parameters(model), preprocess)
    report.add(*checks)
    train = subset(data, "train", 1000 if quick else 2000, preprocess)
    val = subset(data, "val", 500 if quick else 1000, preprocess)
    budget = (QUICK_BUDGET_S if quick else BUDGET_S) - FIXED_S - (time.perf_counter() - t0)
    run_model_checks(report, cfg, setup.task, model, train, val, quick, Clock(budget, console))
    log(f"doctor: {cfg.model.name} on {data.source.name} ({num_classes} classes, {len(train[1])} images probed) "
        f"in {time.perf_counter() - t0:.1f} s")
    return report


@dataclass
class Clock:
    """The seconds the model checks may take, and where their progress is shown."""

    seconds: float
    console: Any
    start: float = field(default_factory=time.perf_counter)

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.start)


def run_model_checks(report: DoctorReport, cfg: Config, task: Task, model: nn.Module, train: tuple,
                     val: tuple | None, quick: bool, clock: Clock) -> None:
    """Checks 2-7 on copies of the model: initial loss, init, gradients and updates, then the training checks in
    the plan that fits the time left."""
    opt = make_optimizer_fn(cfg)
    lr = set_lr(cfg)
    loss_fn, num_classes = task.build_loss(cfg).to(train[0].device), len(task.class_names)
    n = max(32, min(128, EARLY_PIXELS // (train[0].shape[-1] * train[0].shape[-2])))  # 128 up to 64 px
    x, y = train[0][:n], train[1][:n]
    stats, out = activation_stats(model, x)  # one forward pass for the initial loss and the activations
    checks, report.details["initial_loss"] = initial_loss_check(model, loss_fn, x, y, num_classes, out=out)
    report.add(*checks)
    checks, report.details["activations"] = init_checks(model, stats)
    report.add(*checks)
    report.details["adaptive"] = adaptive = cfg.train.optimizer.lower() != "sgd"
    checks, report.details["gradients"], seconds = gradient_checks(model, loss_fn, opt, x, y, adaptive)
    report.add(*checks)
    plan, estimate = fit_plan(seconds / len(y), clock.left(), quick, train[0].shape[-1])
    net, train, val, plan = scaled(cfg, task, model, train, val, plan)
    report.details["plan"] = {**asdict(plan), "estimate_s": round(estimate, 1), "step_seconds": seconds,
                              "step_images": len(y)}
    over = estimate > clock.left()
    clock.console.print(f"doctor: training checks: {plan.describe()}; about {estimate:.0f} s (a training step of "
                        f"{len(y)} images takes {seconds:.2f} s here)" + ("; shortened to fit the time budget" if
                        plan.shortened and not over else "; over the time budget even so" if over else ""),
                        markup=False, soft_wrap=True)
    with progress(clock.console, "overfit tiny", plan.overfit_steps) as tick:
        checks, overfit = overfit_check(net, loss_fn, opt, train[0][:plan.overfit_images],
                                        train[1][:plan.overfit_images], batch=plan.overfit_batch,
                                        max_steps=plan.overfit_steps, tick=tick)
    report.add(*shortened(checks, plan, f"{plan.overfit_images} images in batches of {plan.overfit_batch}"))
    if not report.details["gradients"]:
        return
    report.details["overfit"] = overfit
    with progress(clock.console, "lr range test", plan.sweeps * plan.sweep_steps) as tick:
        found = lr_find(net, loss_fn, opt, *train, seeds=plan.sweeps, steps=plan.sweep_steps, batch=plan.batch,
                        tick=tick)
    report.details["lr_find"] = found
    report.add(*shortened(lr_check(found, lr), plan, f"{plan.sweeps} x {plan.sweep_steps} steps of {plan.batch}"))
    counts = torch.bincount(train[1], minlength=num_classes).float()
    chance = report.details["initial_loss"].get("chance", float("nan"))
    with progress(clock.console, "training probe", plan.probe_steps) as tick:
        checks, report.details["probe"] = probe(net, loss_fn, opt, train, val, float(counts.max() / counts.sum()),
                                                chance, steps=plan.probe_steps, batch=plan.batch, tick=tick,
                                                eval_images=plan.eval_images)
    report.add(*shortened(checks, plan, f"{plan.probe_steps} steps of {plan.batch}, accuracy on "
                                        f"{min(plan.eval_images, len(train[1]))} images"))


def scaled(cfg: Config, task: Task, model: nn.Module, train: tuple, val: tuple | None, plan: Plan) -> tuple:
    """The model and subsets the training checks run on: as they are, or for a plan on downscaled images the same
    model on smaller images (one with global pooling takes any size) or, trained from scratch, the same
    architecture built for the smaller size; a model that can do neither keeps the full size."""
    if plan.scale == 1:
        return model, train, val, plan
    side = max(16, round(train[0].shape[-1] * plan.scale))
    small = [None if s is None else (F.interpolate(s[0], size=(side, side), mode="bilinear", antialias=True,
                                                   align_corners=False), s[1]) for s in (train, val)]
    try:
        with torch.no_grad():
            model.eval()(small[0][0][:2])
        net = model
    except RuntimeError:  # a dense layer after a flatten fixes the size
        if not from_scratch(cfg):
            return model, train, val, replace(plan, scale=1.0)
        small_cfg = cfg.copy()
        small_cfg.data.image_size = side
        seed_everything(cfg.train.seed)
        net = task.build_model(small_cfg, ImageGeometry((side, side), train[0].shape[1]), load_weights=False)
        net = net.to(train[0].device).float()
    return net, small[0], small[1], plan


def shortened(checks: list, plan: Plan, what: str) -> list:
    """The checks of a plan shortened to fit the time budget say so in their measured value."""
    if plan.shortened:
        for c in checks:
            c.value += f" [{what}: shortened to fit the time budget]"
    return checks


def write_outputs(report: DoctorReport, folder: Path, lr: float) -> None:
    """doctor.json and the PNG plots in `folder`."""
    report.out = folder
    folder.mkdir(parents=True, exist_ok=True)
    report.write(folder)
    d = report.details
    if d.get("gradients"):
        plots.layers_plot(d.get("activations") or [], d["gradients"], folder / "layers.png",
                          ADAPTIVE_HIGH if d.get("adaptive") else UPDATE_BAND[1])
    if d.get("lr_find"):
        plots.lr_plot(d["lr_find"], lr, folder / "lr_find.png")
    if d.get("probe"):
        plots.training_plot(d["overfit"]["losses"], d["probe"]["losses"], d["initial_loss"]["chance"],
                            folder / "training.png")


def before_training(cfg: Config, run_dir, setup: Setup, log) -> Config:
    """cnnlab train's hook: the cheap checks (data, initial loss: a line for each one not ok), and `--lr find`
    resolved to a number (the sweep in RUN/lr_find.json and .png). The global random state is left as it was."""
    with torch.random.fork_rng(devices=range(torch.cuda.device_count())):  # the CUDA generators too
        if cfg.train.checks:
            for c in cheap_checks(cfg, setup) if isinstance(setup.task, ClassificationTask) else []:
                if c.status != OK:
                    log(f"check {c.status}: {c.name}: {c.value}; {c.advice}")
        if cfg.train.lr != "find":
            return cfg
        if cfg.distributed.nproc > 1 or dist.active():
            raise CnnlabError("--lr find runs in one process: find it with one (cnnlab doctor DATA), then pass the "
                              "number to the distributed run")
        found = find_lr(cfg, setup)
    cfg = cfg.copy()
    cfg.train.lr = float(f"{found['suggested']:.2g}")
    log(f"lr find: suggested {cfg.train.lr:g} (seeds {found['low']:.1e}..{found['high']:.1e}); saved "
        f"lr_find.json / lr_find.png")
    if dist.is_writer():
        sweeps = [{k: s[k] for k in ("lr", "loss", "suggested", "fell")} for s in found["sweeps"]]
        run_dir.file(RunDir.LR_FIND).write_text(json.dumps({**found, "sweeps": sweeps, "lr": cfg.train.lr}, indent=1))
        plots.lr_plot(found, cfg.train.lr, run_dir.file(RunDir.LR_FIND_PLOT))
    return cfg


def cheap_checks(cfg: Config, setup: Setup) -> list:
    """Checks 1 (without duplicates) and 2 on the CPU, in eval mode (no batch-norm statistics move)."""
    model, data = setup.model, setup.data
    was_training = model.training
    preprocess = setup.preprocess(torch.device("cpu"))
    # the counts and their imbalance are the balance plan's line; duplicates take a pass over every image
    checks, _ = data_checks(cfg, data, count_parameters(model), preprocess, duplicates=False, counts=False)
    x, y = subset(data, "train", 128, preprocess)
    try:
        checks += initial_loss_check(model, setup.task.build_loss(cfg), x, y, len(data.class_names))[0]
    finally:
        model.train(was_training)
    return checks


def find_lr(cfg: Config, setup: Setup) -> dict:
    """The range test of `doctor` on up to 2,000 training images, 3 seeds."""
    device = resolve_device(cfg.train.device)
    net = copy.deepcopy(setup.model).to(device).float()
    x, y = subset(setup.data, "train", 2000, setup.preprocess(device))
    probe_cfg = cfg.copy()
    probe_cfg.train.lr = 1e-3  # replaced step by step by the sweep
    loss_fn = setup.task.build_loss(cfg).to(device)
    return lr_find(net, loss_fn, make_optimizer_fn(probe_cfg), x, y, seeds=3, steps=100)


def output_folder(out: str | None) -> Path:
    """--out, refused when it is a non-empty folder; default runs/doctor-<time>."""
    if out is None:
        return Path("runs") / time.strftime("doctor-%Y%m%d-%H%M%S")
    path = Path(out)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise CnnlabError(f"--out {out} exists and is not empty: doctor never overwrites it; choose a new folder")
    return path


__all__ = ["doctor", "diagnose", "print_report", "write_outputs", "output_folder"]
