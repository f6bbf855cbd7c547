"""Optimizers and learning-rate schedules by name.

Schedules are per-step multipliers of the base learning rate (a LambdaLR), so ReduceLROnPlateau can scale
the base rates underneath any schedule. Batch size "full" is batch gradient descent, 1 is stochastic
gradient descent, anything between is mini-batch gradient descent.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch

from cnnlab.errors import CnnlabError
from cnnlab.registry import Registry

OPTIMIZERS = Registry("optimizer")
SCHEDULES = Registry("schedule")

# Default peak learning rates. Adam 3e-3 with one-cycle: 99.1% MNIST test with seed_cnn in 3 epochs
# (benchmarks/bench_speed.py); SGD's usual 0.05 with momentum 0.9.
DEFAULT_LR = {"adam": 3e-3, "adamw": 3e-3, "sgd": 0.05, "rmsprop": 1e-3}


def _fused(params: list) -> dict:
    """{"fused": True} when every parameter is a float tensor on the CPU or a CUDA GPU: one fused kernel updates
    all parameters (Adam on seed_cnn: 0.7 ms instead of 1.9 ms per step on a 2-core CPU, about 3% of a step)."""
    tensors = [t for p in params for t in (p["params"] if isinstance(p, dict) else [p])]
    ok = bool(tensors) and all(t.is_floating_point() and t.device.type in ("cpu", "cuda") for t in tensors)
    return {"fused": True} if ok else {}


@OPTIMIZERS.register("sgd", doc="SGD with momentum / Nesterov")
def sgd(params, lr: float, momentum: float = 0.9, nesterov: bool = False, weight_decay: float = 0.0):
    params = list(params)
    return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0,
                           weight_decay=weight_decay, **_fused(params))


@OPTIMIZERS.register("adam", doc="Adam (L2 weight decay added to the gradient)")
def adam(params, lr: float, weight_decay: float = 0.0, **_):
    params = list(params)
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, **_fused(params))


@OPTIMIZERS.register("adamw", doc="AdamW (decoupled weight decay)")
def adamw(params, lr: float, weight_decay: float = 0.01, **_):
    params = list(params)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, **_fused(params))


@OPTIMIZERS.register("rmsprop", doc="RMSprop with momentum")
def rmsprop(params, lr: float, momentum: float = 0.0, weight_decay: float = 0.0, **_):
    return torch.optim.RMSprop(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


def resolve_lr(lr: float | str | None, optimizer: str) -> float | str:
    """A learning rate as a number: `lr`, or the optimizer's default (DEFAULT_LR) when it is None ("find" stays
    "find": the range test replaces it before the run is resolved)."""
    return DEFAULT_LR[optimizer.lower()] if lr is None else lr


def create_optimizer(name: str, params: Iterable, lr: float | None, momentum: float = 0.9, nesterov: bool = False,
                     weight_decay: float = 0.0) -> torch.optim.Optimizer:
    builder = OPTIMIZERS.get(name)
    lr = resolve_lr(lr, name)
    if lr <= 0:
        raise CnnlabError(f"the learning rate must be positive, got {lr}")
    if name.lower() == "sgd":
        return builder(params, lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
    return builder(params, lr, momentum=momentum, weight_decay=weight_decay)


# epochs "auto": enough epochs for about this many optimizer steps. seed_cnn + one-cycle Adam 3e-3 reaches 99.2% on
# a held-out MNIST val split after 3 epochs of 390 steps (benchmarks/results/ablate_mnist_defaults.md).
AUTO_STEPS = 1200
AUTO_EPOCHS_RANGE = (3, 30)
# Fine-tuning pretrained weights (transfer strategies fine-tune / full) needs far fewer steps: the features are
# already good and long runs at a high rate wash them out. MobileNetV1 on cats_vs_dogs (2,000 images, batch 32):
# 92.7-93.2% val after 3 epochs of 63 steps; ResNet-20 on aerial_cactus (batch 64): 99.5% after 3 epochs
# (benchmarks/results/transfer.md).
AUTO_FINETUNE_STEPS = 180
AUTO_FINETUNE_EPOCHS_RANGE = (3, 10)
DEFAULT_BATCH = 128
DEFAULT_FINETUNE_BATCH = 32  # small batches regularise fine-tuning; batch-norm statistics stay frozen below 16
FINETUNE_STRATEGIES = ("fine-tune", "full")


def resolve_batch_size(batch_size: int | str, strategy: str | None = None) -> int | str:
    """"auto" -> DEFAULT_FINETUNE_BATCH when fine-tuning pretrained weights, else DEFAULT_BATCH; others as given."""
    if batch_size == "auto":
        return DEFAULT_FINETUNE_BATCH if strategy in FINETUNE_STRATEGIES else DEFAULT_BATCH
    return batch_size


def resolve_epochs(epochs: int | str, steps_per_epoch: int, strategy: str | None = None) -> int:
    """A number of epochs, or "auto": about AUTO_STEPS optimizer steps (AUTO_FINETUNE_STEPS when fine-tuning),
    clamped to the matching epoch range."""
    if epochs == "auto":
        steps, (lo, hi) = ((AUTO_FINETUNE_STEPS, AUTO_FINETUNE_EPOCHS_RANGE) if strategy in FINETUNE_STRATEGIES
                           else (AUTO_STEPS, AUTO_EPOCHS_RANGE))
        return int(min(hi, max(lo, math.ceil(steps / max(1, steps_per_epoch)))))
    if isinstance(epochs, str) or epochs < 1:
        raise CnnlabError(f"epochs must be a positive number or 'auto', got {epochs!r}")
    return int(epochs)


def _warmup(step: int, warmup_steps: int) -> float:
    return min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0


@SCHEDULES.register("constant", doc="constant learning rate (after warmup)")
def constant(total_steps: int, steps_per_epoch: int, warmup_steps: int, **_) -> Callable[[int], float]:
    return lambda step: _warmup(step, warmup_steps)


@SCHEDULES.register("step", doc="multiply by gamma every step_size epochs")
def step_schedule(total_steps: int, steps_per_epoch: int, warmup_steps: int, step_size: int = 10,
                  gamma: float = 0.1, **_) -> Callable[[int], float]:
    return lambda step: _warmup(step, warmup_steps) * gamma ** (step // max(1, step_size * steps_per_epoch))


@SCHEDULES.register("cosine", doc="cosine decay to zero over the run (after warmup)")
def cosine(total_steps: int, steps_per_epoch: int, warmup_steps: int, **_) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < warmup_steps:
            return _warmup(step, warmup_steps)
        t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return f


@SCHEDULES.register("onecycle", doc="one-cycle (Smith 2018): warm up to the peak over 25%, cosine anneal")
def onecycle(total_steps: int, steps_per_epoch: int, warmup_steps: int, pct_start: float = 0.25,
             div_factor: float = 25.0, final_div_factor: float = 1e4, **_) -> Callable[[int], float]:
    up = max(1, warmup_steps or int(total_steps * pct_start))
    start, end = 1 / div_factor, 1 / (div_factor * final_div_factor)

    def f(step: int) -> float:
        if step < up:
            return start + (1 - start) * (1 - math.cos(math.pi * step / up)) / 2
        t = min(1.0, (step - up) / max(1, total_steps - up))
        return end + (1 - end) * (1 + math.cos(math.pi * t)) / 2

    return f


def create_scheduler(name: str, optimizer: torch.optim.Optimizer, total_steps: int, steps_per_epoch: int,
                     warmup_epochs: float = 0.0, **kwargs) -> torch.optim.lr_scheduler.LambdaLR:
    factory = SCHEDULES.get(name)
    warmup_steps = int(round(warmup_epochs * steps_per_epoch))
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, factory(total_steps=total_steps, steps_per_epoch=steps_per_epoch, warmup_steps=warmup_steps,
                           **kwargs)
    )
