"""The course's first networks: the seed CNN, LeNet-5 and a multilayer perceptron."""

from __future__ import annotations

import functools

import torch
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.models.base import ClassifierNet
from cnnlab.models.layers import make_activation
from cnnlab.models.registry import register_model


def _conv_out(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def _init_relu_net(model: nn.Module) -> None:
    """He-normal weights, zero biases: the standard init for ReLU networks (He et al. 2015)."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            nn.init.zeros_(m.bias)


INITS = "zeros, normal:STD, xavier, he"


def apply_init(model: nn.Module, init: str) -> None:
    """Re-initialize every conv / linear layer: zeros, normal:STD (e.g. normal:0.01), xavier or he; zero biases.

    The course notes' init experiments: zeros never breaks the symmetry, a small normal makes deep activations
    vanish, a large one saturates tanh / sigmoid units."""
    name, _, arg = str(init).partition(":")
    if name not in ("zeros", "normal", "xavier", "he") or (name == "normal") != bool(arg):
        raise CnnlabError(f"unknown init '{init}': use {INITS}")
    try:
        std = float(arg) if arg else 0.0
    except ValueError:
        raise CnnlabError(f"init normal:STD needs a number, got '{init}'") from None
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            if name == "zeros":
                nn.init.zeros_(m.weight)
            elif name == "normal":
                nn.init.normal_(m.weight, 0.0, std)
            elif name == "xavier":
                nn.init.xavier_normal_(m.weight)
            else:
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def init_net(model: nn.Module, init: str | None, default_he: bool = True) -> None:
    """The model's default init (He for the ReLU nets), or the `init` asked for."""
    if init is None:
        if default_he:
            _init_relu_net(model)
        return
    apply_init(model, init)


class SeedCNN(ClassifierNet):
    """Conv(16)x2 - MaxPool - Conv(32)x2 - MaxPool - Conv(64)x2 - Flatten - Dense(128) - Dense(classes).

    On 1x28x28 input: 474,618 parameters (the course notes' count).
    """

    def __init__(self, num_classes: int = 10, in_chans: int = 1, input_size: tuple[int, int] = (28, 28),
                 width: int = 16, hidden: int = 128, dropout: float = 0.0, activation: str = "relu",
                 init: str | None = None):
        super().__init__()
        w = width
        act = functools.partial(make_activation, activation, inplace=True)
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, w, 3, padding="same"), act(w),
            nn.Conv2d(w, w, 3, padding="same"), act(w),
            nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding="same"), act(2 * w),
            nn.Conv2d(2 * w, 2 * w, 3, padding="same"), act(2 * w),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 4 * w, 3, padding="same"), act(4 * w),
            nn.Conv2d(4 * w, 4 * w, 3, padding="same"), act(4 * w),
        )
        h, wd = input_size[0] // 4, input_size[1] // 4
        if h < 1 or wd < 1:
            raise CnnlabError(f"seed_cnn needs images of at least 4x4 pixels, got {input_size}")
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(4 * w * h * wd, hidden), act(hidden),
            *([nn.Dropout(dropout)] if dropout else []),
            nn.Linear(hidden, num_classes),
        )
        self.num_classes = num_classes
        init_net(self, init)


class LeNet5(ClassifierNet):
    """LeCun et al. 1998: Conv(6,5x5)-AvgPool-Conv(16,5x5)-AvgPool-FC120-FC84-FC(classes), tanh.

    28x28 input is padded by 2 (as the original's 32x32), giving 61,706 parameters for 10 classes.
    """

    def __init__(self, num_classes: int = 10, in_chans: int = 1, input_size: tuple[int, int] = (28, 28),
                 activation: str = "tanh", init: str | None = None):
        super().__init__()
        act = functools.partial(make_activation, activation)  # any name from cnnlab.models.layers
        pad = 2 if min(input_size) <= 28 else 0
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, 6, 5, padding=pad), act(6), nn.AvgPool2d(2),
            nn.Conv2d(6, 16, 5), act(16), nn.AvgPool2d(2),
        )
        h, w = (_conv_out(s, 5, 1, pad) // 2 for s in input_size)
        h, w = _conv_out(h, 5) // 2, _conv_out(w, 5) // 2
        if h < 1 or w < 1:
            raise CnnlabError(
                f"lenet5 needs images of at least 16x16 pixels, got {input_size[0]}x{input_size[1]}: "
                "pass --image-size 28 (or 32)"
            )
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(16 * h * w, 120), act(120), nn.Linear(120, 84), act(84), nn.Linear(84, num_classes)
        )
        self.num_classes = num_classes
        init_net(self, init, default_he=False)  # PyTorch's default init unless `init` is given


class MLP(ClassifierNet):
    """Flatten, then fully connected hidden layers with ReLU (the course's starting point before CNNs).

    `depth` and `width` make a deep plain net (depth hidden layers of width units) instead of `hidden`."""

    def __init__(self, num_classes: int = 10, in_chans: int = 1, input_size: tuple[int, int] = (28, 28),
                 hidden: tuple[int, ...] = (256, 128), dropout: float = 0.0, activation: str = "relu",
                 init: str | None = None, depth: int | None = None, width: int = 256):
        super().__init__()
        self.features = nn.Flatten()
        layers: list[nn.Module] = []
        if depth is not None:
            if int(depth) < 1:
                raise CnnlabError(f"mlp depth must be at least 1, got {depth}")
            hidden = (int(width),) * int(depth)
        width = in_chans * input_size[0] * input_size[1]
        for h in hidden:
            layers += [nn.Linear(width, h), make_activation(activation, h, inplace=True)]
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.head = nn.Sequential(*layers)
        self.num_classes = num_classes
        init_net(self, init)

    def group_matcher(self, coarse: bool = False) -> dict:
        return {"stem": r"^features\.", "blocks": r"^head\.(\d+)", "head": r"^head\.$"}


@register_model("seed_cnn")
def seed_cnn(num_classes: int, in_chans: int = 1, input_size=(28, 28), **kwargs) -> nn.Module:
    """The course notes' CNN: 3 pairs of 3x3 convs (16/32/64), 2 max-pools, Dense(128), Dense(classes)."""
    return SeedCNN(num_classes, in_chans, tuple(input_size), **kwargs)


@register_model("lenet5")
def lenet5(num_classes: int, in_chans: int = 1, input_size=(28, 28), **kwargs) -> nn.Module:
    """LeNet-5 (LeCun 1998): two 5x5 conv + average-pool stages, then 120-84-classes, tanh."""
    return LeNet5(num_classes, in_chans, tuple(input_size), **kwargs)


@register_model("mlp")
def mlp(num_classes: int, in_chans: int = 1, input_size=(28, 28), **kwargs) -> nn.Module:
    """Multilayer perceptron on flattened pixels: 256-128 ReLU hidden units."""
    return MLP(num_classes, in_chans, tuple(input_size), **kwargs)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


__all__ = ["SeedCNN", "LeNet5", "MLP", "apply_init", "count_parameters", "torch"]
