"""Checks 5-7, short trainings on copies of the model (the model itself is never changed): overfit a tiny subset,
the learning-rate range test (Smith 2017) over a few seeds, and a short training probe."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
from torch import nn
from torch.nn.modules.dropout import _DropoutNd

from cnnlab.doctor.checks import FAIL, OK, WARN, Check
from cnnlab.tasks.classification import main_output, predicted_classes


def step(net: nn.Module, optimizer, loss_fn: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """One update; (loss, accuracy) of the batch."""
    optimizer.zero_grad(set_to_none=True)
    out = main_output(net(x))
    loss = loss_fn(out, y)
    loss.backward()
    optimizer.step()
    return loss.item(), (predicted_classes(out) == y).float().mean().item()


def accuracy(net: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 512) -> float:
    net.eval()
    with torch.no_grad():
        hits = sum((predicted_classes(net(x[i:i + batch])) == y[i:i + batch]).sum().item()
                   for i in range(0, len(y), batch))
    net.train()
    return hits / max(len(y), 1)


def trainable(net: nn.Module) -> list[nn.Parameter]:
    return [p for p in net.parameters() if p.requires_grad]


def overfit_check(model: nn.Module, loss_fn, optimizer_fn, x: torch.Tensor, y: torch.Tensor, batch: int = 32,
                  max_steps: int = 150, tick: Callable[[], None] | None = None) -> tuple[list[Check], dict]:
    """Two batches, no augmentation or regularization: near 100% train accuracy within the step budget."""
    net = copy.deepcopy(model).train()
    expected = f"~100% of {len(y)} images within {max_steps} steps"
    if not trainable(net):
        return [Check("overfit tiny", FAIL, "no trainable parameters", expected,
                      "the model is frozen (no trainable head): unfreeze the classifier")], {}
    for m in net.modules():
        if isinstance(m, _DropoutNd):  # every kind: Dropout, Dropout1d/2d/3d, AlphaDropout (SELU), FeatureAlphaDropout
            m.p = 0.0
    optimizer = optimizer_fn(net)
    losses, acc, steps = [], 0.0, 0
    for steps in range(1, max_steps + 1):
        i = (steps % max(len(y) // batch, 1)) * batch
        losses.append(step(net, optimizer, loss_fn, x[i:i + batch], y[i:i + batch])[0])
        if tick is not None:
            tick()
        if steps % 10 == 0:
            acc = accuracy(net, x, y)
            if acc >= 0.99:
                break
    acc = accuracy(net, x, y)
    value = f"{acc:.0%} train accuracy after {steps} steps (loss {losses[-1]:.3f})"
    info = {"losses": losses, "accuracy": acc}
    if acc >= 0.95:
        return [Check("overfit tiny", OK, value, expected)], info
    return [Check("overfit tiny", FAIL, value, expected,
                  "cannot memorize two batches: something is broken (labels vs images, a frozen or too small "
                  "model, an lr far off); fix this before training longer")], info


def lr_sweep(model: nn.Module, loss_fn, optimizer_fn, x: torch.Tensor, y: torch.Tensor, seed: int, steps: int,
             batch: int, lo: float = 1e-6, hi: float = 1.0, tick: Callable[[], None] | None = None) -> dict:
    """One exponential sweep from lo to hi (on a copy: the model and its optimizer are untouched)."""
    net = copy.deepcopy(model).train()
    optimizer = optimizer_fn(net)
    gen = torch.Generator().manual_seed(seed)  # a private generator: the global RNG is not consumed
    lrs, losses, smooth, best = [], [], None, math.inf
    for k in range(steps):
        lr = lo * (hi / lo) ** (k / (steps - 1))
        for g in optimizer.param_groups:
            g["lr"] = lr
        idx = torch.randint(0, len(y), (batch,), generator=gen)
        loss = step(net, optimizer, loss_fn, x[idx], y[idx])[0]
        if tick is not None:
            tick()
        smooth = loss if smooth is None else 0.8 * smooth + 0.2 * loss
        if not math.isfinite(smooth) or smooth > 4 * best:
            break
        best = min(best, smooth)
        lrs.append(lr)
        losses.append(smooth)
    fell = bool(losses) and min(losses) < 0.9 * losses[0]
    return {"lr": lrs, "loss": losses, "suggested": suggest(lrs, losses), "fell": fell}


def suggest(lrs: list[float], losses: list[float]) -> float:
    """A tenth of the lr at the lowest smoothed loss (the range test's rule of thumb)."""
    if not losses:
        return lrs[0] if lrs else 1e-3
    return lrs[min(range(len(losses)), key=losses.__getitem__)] / 10


def lr_find(model: nn.Module, loss_fn, optimizer_fn, x: torch.Tensor, y: torch.Tensor, seeds: int = 3,
            steps: int = 100, batch: int = 64, tick: Callable[[], None] | None = None) -> dict:
    """The range test over `seeds` batch orders: the geometric mean of the suggestions and their spread. A sweep
    stops as soon as its smoothed loss has clearly diverged (4x its lowest)."""
    sweeps = [lr_sweep(model, loss_fn, optimizer_fn, x, y, seed, steps, batch, tick=tick) for seed in range(seeds)]
    logs = [math.log10(s["suggested"]) for s in sweeps]
    mean = sum(logs) / len(logs)
    return {"suggested": 10 ** mean, "low": 10 ** min(logs), "high": 10 ** max(logs), "sweeps": sweeps}


def lr_check(found: dict, lr: float) -> list[Check]:
    s, lo, hi = found["suggested"], found["low"], found["high"]
    value = f"suggested {s:.1e} (seeds {lo:.1e}..{hi:.1e}); set {lr:.1e}"
    expected = "set lr within 10x of the suggestion"
    if not found["sweeps"][0]["lr"]:
        return [Check("lr range test", FAIL, value, expected, "the loss diverged at once: check the data / init")]
    if not any(sw["fell"] for sw in found["sweeps"]):
        return [Check("lr range test", WARN, value, expected, "the loss never fell during the sweep: no lr trains "
                      "this model (see the init and gradient checks)")]
    if hi / lo > 10:
        return [Check("lr range test", WARN, value, expected, "the sweeps disagree (noisy loss): larger batches, "
                      "or try both ends")]
    if lr > 10 * s:
        return [Check("lr range test", WARN, value, expected, f"the lr is high: try --lr {s:.1g} (or --lr find)")]
    if lr < s / 10:
        return [Check("lr range test", WARN, value, expected, f"the lr is low: try --lr {s:.1g} (or --lr find)")]
    return [Check("lr range test", OK, value, expected)]


def probe(model: nn.Module, loss_fn, optimizer_fn: Callable, train: tuple, val: tuple | None, chance_acc: float,
          chance_loss: float, steps: int = 150, batch: int = 64, seed: int = 0,
          tick: Callable[[], None] | None = None, eval_images: int | None = None) -> tuple[list[Check], dict]:
    """A short training run at the set lr: plateau then fall (bad init), rise / NaN (lr too high), val vs train.
    It stops early once the loss is not finite or has clearly diverged (10x its start, the verdict's bound)."""
    net = copy.deepcopy(model).train()
    if not trainable(net):
        return [], {}
    optimizer = optimizer_fn(net)
    gen = torch.Generator().manual_seed(seed)
    x, y = train
    losses = []
    for _ in range(steps):
        idx = torch.randint(0, len(y), (batch,), generator=gen)
        losses.append(step(net, optimizer, loss_fn, x[idx], y[idx])[0])
        if tick is not None:
            tick()
        if not math.isfinite(losses[-1]) or losses[-1] > 10 * losses[0]:
            break
    info = {"losses": losses}
    if eval_images is not None:  # the accuracies on the first images of the (shuffled) subsets
        train = (train[0][:eval_images], train[1][:eval_images])
        val = (val[0][: eval_images // 2], val[1][: eval_images // 2]) if val is not None else None
    return probe_verdict(net, losses, train, val, chance_acc, chance_loss, info), info


def above_chance(acc: float, chance: float, n: int, z: float = 3.0) -> bool:
    """Whether an accuracy on n images is above the chance level by more than its sampling noise (z binomial
    standard deviations, at least 2 points)."""
    return acc > chance + max(0.02, z * math.sqrt(chance * (1 - chance) / max(n, 1)))


def probe_verdict(net, losses: list[float], train: tuple, val: tuple | None, chance_acc: float, chance_loss: float,
                  info: dict) -> list[Check]:
    expected = "loss falls from the start; val near train"
    k = max(len(losses) // 10, 1)
    start, end = losses[0], sum(losses[-k:]) / k
    if not all(math.isfinite(v) for v in losses) or end > 1.5 * start or max(losses) > 10 * start:
        return [Check("training probe", FAIL, f"loss {start:.3g} -> max {max(losses):.3g} -> {end:.3g} in "
                      f"{len(losses)} steps", expected,
                      "the loss rises / diverges (NaN): the lr is too high; lower it 10x or use --lr find")]
    tr = accuracy(net, *train)
    va = accuracy(net, *val) if val is not None else None
    info.update(train_accuracy=tr, val_accuracy=va)
    value = f"loss {start:.3f} -> {end:.3f}, train acc {tr:.0%}" + (f", val {va:.0%}" if va is not None else "")
    flat = next((i for i, v in enumerate(losses) if v < 0.9 * chance_loss), len(losses))
    if flat > 0.3 * len(losses) and end < 0.9 * chance_loss:
        return [Check("training probe", WARN, value + f"; at chance for {flat} steps", expected,
                      "the loss stalls at the chance value, then falls: a bad initialization (init=he / xavier)")]
    if va is not None and above_chance(tr, chance_acc, len(train[1])) and not above_chance(va, chance_acc,
                                                                                             len(val[1])):
        return [Check("training probe", WARN, value, expected, "train learns but val stays at chance: the labels do "
                      "not match the images (shuffled?), train and val differ (preprocessing mismatch), or the "
                      "probe's steps are too few for this data")]
    if va is not None and va > tr + 0.15:
        return [Check("training probe", WARN, value, expected, "val far above train: leakage (duplicates across the "
                      "splits) or a preprocessing mismatch")]
    if end > 0.95 * start:
        return [Check("training probe", WARN, value, expected, "the loss does not fall: check the lr (--lr find)")]
    return [Check("training probe", OK, value, expected)]
