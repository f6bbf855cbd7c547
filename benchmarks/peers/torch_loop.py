"""Peer: the plain, hand-written PyTorch training loop a competent user writes.

Tensors stay in memory, batches come from ``torch.randperm``, activations are channels_last, and bf16 autocast
(``torch.autocast("cpu", dtype=torch.bfloat16)``) is optional. The models are defined here (not imported from
cnnlab) so the peer is independent of the code under test; PyTorch's default init unless ``init="he"``.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.common import Dataset, Split, random_crop_flip

CL = torch.channels_last


class SeedCNN(nn.Module):
    """Conv(16)x2-Pool-Conv(32)x2-Pool-Conv(64)x2-Dense(128)-Dense(10): 474,618 params on 28x28x1."""

    def __init__(self, in_chans: int = 1, size: int = 28, num_classes: int = 10):
        super().__init__()
        layers: list[nn.Module] = []
        c = in_chans
        for i, w in enumerate((16, 16, 32, 32, 64, 64)):
            layers += [nn.Conv2d(c, w, 3, padding=1), nn.ReLU(inplace=True)]
            if i in (1, 3):
                layers.append(nn.MaxPool2d(2))
            c = w
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64 * (size // 4) ** 2, 128),
            nn.ReLU(inplace=True),
            nn.Linear(128, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class _BasicBlock(nn.Module):
    """ResNet basic block, parameter-free option-A shortcut (stride-2 subsample + zero channel pad)."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.pad = c_out - c_in
        self.stride = stride

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1 and self.pad == 0:
            return x
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet20(nn.Module):
    """CIFAR ResNet-20 (He et al. 2016, option A shortcuts): 3 stages x 3 blocks, widths 16/32/64, ~0.27M."""

    def __init__(self, num_classes: int = 10, depth: int = 20):
        super().__init__()
        n = (depth - 2) // 6
        self.stem = nn.Sequential(
            nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True)
        )
        blocks: list[nn.Module] = []
        c = 16
        for stage, w in enumerate((16, 32, 64)):
            for i in range(n):
                blocks.append(_BasicBlock(c, w, 2 if stage > 0 and i == 0 else 1))
                c = w
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def he_init_(model: nn.Module) -> None:
    """He-normal weights (fan_in, ReLU gain) and zero biases for every conv/linear layer."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def build_model(name: str, dataset: Dataset, init: str = "default") -> nn.Module:
    """``seed_cnn`` or ``resnet20`` for ``dataset``'s image shape, channels_last, default or He init."""
    _, h, _, c = dataset.train.x.shape
    if name == "seed_cnn":
        model: nn.Module = SeedCNN(c, h, dataset.num_classes)
    elif name == "resnet20":
        model = ResNet20(dataset.num_classes)
    else:
        raise ValueError(f"unknown model {name!r}")
    if init == "he":
        he_init_(model)
    elif init != "default":
        raise ValueError(f"unknown init {init!r}")
    return model.to(memory_format=CL)


def to_tensors(split: Split) -> tuple[torch.Tensor, torch.Tensor]:
    """NHWC numpy -> NCHW tensor with channels_last strides (a view, no copy) and int64 labels."""
    return torch.from_numpy(split.x).permute(0, 3, 1, 2), torch.from_numpy(split.y)


def _autocast(precision: str) -> torch.autocast:
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be fp32 or bf16, got {precision!r}")
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")


@torch.inference_mode()
def evaluate(model: nn.Module, split: Split, precision: str = "fp32", batch_size: int = 1000) -> float:
    """Top-1 accuracy of ``model`` on ``split``."""
    model.eval()
    x, y = to_tensors(split)
    correct = 0
    with _autocast(precision):
        for i in range(0, len(y), batch_size):
            xb = x[i : i + batch_size].contiguous(memory_format=CL)
            correct += (model(xb).argmax(1) == y[i : i + batch_size]).sum().item()
    return correct / len(y)


def _make_optimizer(
    model: nn.Module, lr: float, schedule: str, max_lr: float | None, total_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler | None]:
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    if schedule == "constant":
        return opt, None
    if schedule == "onecycle":
        return opt, torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=max_lr or 10 * lr, total_steps=total_steps
        )
    raise ValueError(f"unknown schedule {schedule!r}")


def _train_epoch(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    opt: torch.optim.Optimizer,
    sched: Any,
    batch_size: int,
    precision: str,
    max_steps: int | None = None,
) -> tuple[float, int]:
    """One pass over (x, y) in random order; returns (mean loss, images seen)."""
    model.train()
    perm = torch.randperm(len(y))
    steps = math.ceil(len(y) / batch_size)
    if max_steps is not None:
        steps = min(steps, max_steps)
    loss_sum = torch.zeros(())
    seen = 0
    for s in range(steps):
        idx = perm[s * batch_size : (s + 1) * batch_size]
        xb, yb = x[idx].contiguous(memory_format=CL), y[idx]
        with _autocast(precision):
            loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        loss_sum += loss.detach().float() * len(yb)
        seen += len(yb)
    return loss_sum.item() / seen, seen


def train(
    dataset: Dataset,
    model_name: str = "seed_cnn",
    epochs: int = 5,
    batch_size: int = 128,
    lr: float = 1e-3,
    precision: str = "fp32",
    seed: int = 0,
    target: float | None = None,
    schedule: str = "constant",
    max_lr: float | None = None,
    init: str = "default",
    augment: bool = False,
    val: Split | None = None,
) -> dict[str, Any]:
    """Train with Adam, evaluating test (and optional val) accuracy after each epoch, outside the timing.

    Stops early once test accuracy reaches ``target``. ``epoch_times`` cover training only (including the
    per-epoch numpy augmentation when ``augment``), never evaluation.
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = build_model(model_name, dataset, init)
    x, y = to_tensors(dataset.train)
    opt, sched = _make_optimizer(model, lr, schedule, max_lr, epochs * math.ceil(len(y) / batch_size))
    hist: dict[str, list[float]] = {
        "epoch_times": [],
        "images_per_s": [],
        "train_loss": [],
        "test_acc": [],
        "val_acc": [],
    }
    for _ in range(epochs):
        t0 = time.perf_counter()
        if augment:
            x = to_tensors(Split(random_crop_flip(dataset.train.x, rng), dataset.train.y))[0]
        loss, seen = _train_epoch(model, x, y, opt, sched, batch_size, precision)
        dt = time.perf_counter() - t0
        hist["epoch_times"].append(dt)
        hist["images_per_s"].append(seen / dt)
        hist["train_loss"].append(loss)
        hist["test_acc"].append(evaluate(model, dataset.test, precision))
        if val is not None:
            hist["val_acc"].append(evaluate(model, val, precision))
        if target is not None and hist["test_acc"][-1] >= target:
            break
    return hist


def throughput(
    dataset: Dataset,
    model_name: str = "seed_cnn",
    batch_size: int = 128,
    precision: str = "fp32",
    warmup_steps: int = 20,
    steps: int = 100,
    repeats: int = 3,
    seed: int = 0,
) -> dict[str, Any]:
    """Training images/s over ``repeats`` timed windows of ``steps`` batches after ``warmup_steps``."""
    torch.manual_seed(seed)
    model = build_model(model_name, dataset)
    x, y = to_tensors(dataset.train)
    opt, _ = _make_optimizer(model, 1e-3, "constant", None, 0)
    _train_epoch(model, x, y, opt, None, batch_size, precision, max_steps=warmup_steps)
    rates, cpu_rates = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        _, seen = _train_epoch(model, x, y, opt, None, batch_size, precision, max_steps=steps)
        rates.append(seen / (time.perf_counter() - t0))
        cpu_rates.append(seen / (time.process_time() - c0))
    return {"images_per_s_repeats": rates, "images_per_cpu_s_repeats": cpu_rates}
