"""Densely connected networks (Huang et al. 2017): DenseNet-121/169/201 and DenseNet-BC for CIFAR.

Inside a dense block every layer is BN-act-conv1x1 (bottleneck, 4k channels) then BN-act-conv3x3 (k channels,
the growth rate), and its output is concatenated to all earlier ones; transitions (BN-act-conv1x1 with
compression 0.5, then 2x2 average pool) halve the size between blocks. Names follow torchvision
(`features.denseblock1.denselayer1.conv1`, `classifier`), and densenet121 has its 7,978,856 parameters.
DenseNet-BC for CIFAR (depth L, growth k) has a 3x3 stem of 2k channels and 3 blocks of (L-4)/6 layers:
L=100, k=12 gives about 0.8 M parameters.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.models.base import IMAGENET_CFG
from cnnlab.models.layers import (
    ActSpec,
    GlobalPool,
    apply_init,
    make_activation,
    make_dropout,
    make_norm,
    make_pool,
)
from cnnlab.models.pooled import PooledClassifierNet
from cnnlab.models.registry import register_model


class DenseLayer(nn.Module):
    """BN-act-conv1x1(bn_size*k) - BN-act-conv3x3(k), on the concatenation of all earlier outputs."""

    def __init__(self, cin: int, growth: int, bn_size: int, activation: ActSpec, norm: str, drop_rate: float):
        super().__init__()
        mid = bn_size * growth
        bias = str(norm).lower() == "none"
        self.norm1, self.relu1 = make_norm(norm, cin), make_activation(activation, cin, inplace=True)
        self.conv1 = nn.Conv2d(cin, mid, 1, bias=bias)
        self.norm2, self.relu2 = make_norm(norm, mid), make_activation(activation, mid, inplace=True)
        self.conv2 = nn.Conv2d(mid, growth, 3, padding=1, bias=bias)
        self.drop = make_dropout(drop_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.relu1(self.norm1(x)))
        return self.drop(self.conv2(self.relu2(self.norm2(out))))


class DenseBlock(nn.ModuleDict):
    """`n` dense layers; returns the input concatenated with every layer's output (cin + n*k channels)."""

    def __init__(
        self, n: int, cin: int, growth: int, bn_size: int, activation: ActSpec, norm: str, drop_rate: float
    ) -> None:
        super().__init__()
        for i in range(n):
            self[f"denselayer{i + 1}"] = DenseLayer(cin + i * growth, growth, bn_size, activation, norm, drop_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x]
        for layer in self.values():
            feats.append(layer(torch.cat(feats, 1)))
        return torch.cat(feats, 1)


class Transition(nn.Sequential):
    """BN-act-conv1x1 (compression) then 2x2 pooling (average by default)."""

    def __init__(self, cin: int, cout: int, activation: ActSpec, norm: str, pool: str) -> None:
        super().__init__()
        self.norm = make_norm(norm, cin)
        self.relu = make_activation(activation, cin, inplace=True)
        self.conv = nn.Conv2d(cin, cout, 1, bias=str(norm).lower() == "none")
        self.pool = make_pool(pool, 2, 2)


class DenseNet(PooledClassifierNet):
    """A DenseNet: stem, dense blocks joined by transitions, final BN-act, global average pool, classifier.

    Args:
        growth_rate: k, channels each dense layer adds.
        block_config: layers per dense block, e.g. (6, 12, 24, 16) for DenseNet-121.
        num_init_features: stem channels (64 for ImageNet, 2k for DenseNet-BC).
        bn_size: bottleneck width factor (the 1x1 conv gives bn_size * k channels).
        compression: transition output = floor(compression * input channels).
        stem: 'imagenet' (7x7 stride 2 + max-pool) or 'small' (3x3 stride 1).
        drop_rate: dropout after each dense layer (the paper's 0.2 without augmentation); dropout: before fc.
    """

    classifier_attr = "classifier"

    def __init__(
        self,
        growth_rate: int = 32,
        block_config: tuple[int, ...] = (6, 12, 24, 16),
        num_init_features: int = 64,
        bn_size: int = 4,
        compression: float = 0.5,
        num_classes: int = 1000,
        in_chans: int = 3,
        stem: str = "imagenet",
        activation: ActSpec = "relu",
        norm: str = "batch",
        drop_rate: float = 0.0,
        dropout: float = 0.0,
        pool: str = "avg",
        init: str | float | None = "he_normal",
        bias_init: str | float | None = 0.0,
    ) -> None:
        super().__init__()
        if not 0 < compression <= 1:
            raise CnnlabError(f"densenet compression must be in (0, 1], got {compression}")
        c = num_init_features
        bias = str(norm).lower() == "none"
        if stem == "imagenet":
            parts = [
                ("conv0", nn.Conv2d(in_chans, c, 7, 2, 3, bias=bias)),
                ("norm0", make_norm(norm, c)),
                ("relu0", make_activation(activation, c, inplace=True)),
                ("pool0", nn.MaxPool2d(3, 2, 1)),
            ]
        else:
            parts = [("conv0", nn.Conv2d(in_chans, c, 3, 1, 1, bias=bias))]
        self.features = nn.Sequential(OrderedDict(parts))
        for i, n in enumerate(block_config):
            self.features.add_module(
                f"denseblock{i + 1}", DenseBlock(n, c, growth_rate, bn_size, activation, norm, drop_rate)
            )
            c += n * growth_rate
            if i != len(block_config) - 1:
                cout = int(c * compression)
                self.features.add_module(f"transition{i + 1}", Transition(c, cout, activation, norm, pool))
                c = cout
        self.features.add_module("norm5", make_norm(norm, c))
        self.final_act = make_activation(activation, c, inplace=True)
        self.global_pool = GlobalPool("avg")
        self.head_drop = make_dropout(dropout)
        self.classifier = nn.Linear(c, num_classes)
        self.num_classes = num_classes
        apply_init(self, init, bias_init)
        self.default_cfg = {**IMAGENET_CFG, "input_size": (in_chans, 224, 224)}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.final_act(self.features(x))

    def trunk_modules(self) -> list[tuple[str, nn.Module]]:
        """`features` (stem, dense blocks, transitions, norm5), then the final activation."""
        return [("features", self.features), ("final_act", self.final_act)]

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """stem (conv0/norm0), blocks (denseblock<i> with its transition), head (norm5, classifier)."""
        return {
            "stem": r"^features\.(conv0|norm0)\.",
            "blocks": r"^features\.(?:denseblock|transition)(\d+)",
            "head": r"^features\.norm5\.|^classifier\.",
        }


def _imagenet_densenet(config: tuple[int, ...], num_classes: int, in_chans: int = 3, input_size=(224, 224),
                       small_input: bool | None = None, **kwargs: Any) -> DenseNet:
    small = min(input_size) <= 64 if small_input is None else bool(small_input)
    model = DenseNet(32, config, 64, num_classes=num_classes, in_chans=in_chans,
                     stem="small" if small else "imagenet", **kwargs)
    if small:
        model.default_cfg["input_size"] = (in_chans, *tuple(input_size))
    return model


@register_model("densenet121")
def densenet121(num_classes: int, **kwargs: Any) -> DenseNet:
    """DenseNet-121 (k=32, blocks (6, 12, 24, 16)); 3x3 stem for inputs <= 64 px"""
    return _imagenet_densenet((6, 12, 24, 16), num_classes, **kwargs)


@register_model("densenet169")
def densenet169(num_classes: int, **kwargs: Any) -> DenseNet:
    """DenseNet-169 (k=32, blocks (6, 12, 32, 32)); 3x3 stem for inputs <= 64 px"""
    return _imagenet_densenet((6, 12, 32, 32), num_classes, **kwargs)


@register_model("densenet201")
def densenet201(num_classes: int, **kwargs: Any) -> DenseNet:
    """DenseNet-201 (k=32, blocks (6, 12, 48, 32)); 3x3 stem for inputs <= 64 px"""
    return _imagenet_densenet((6, 12, 48, 32), num_classes, **kwargs)


@register_model("densenet_bc_100")
def densenet_bc(
    num_classes: int,
    in_chans: int = 3,
    input_size=(32, 32),
    depth: int = 100,
    growth_rate: int = 12,
    **kwargs: Any,
) -> DenseNet:
    """DenseNet-BC for CIFAR: depth L (default 100), growth k (12), 3 blocks of (L-4)/6 bottleneck layers."""
    if (depth - 4) % 6 or depth < 10:
        raise CnnlabError(f"DenseNet-BC depth must be 6n+4 (e.g. 40, 100, 190), got {depth}")
    n = (depth - 4) // 6
    model = DenseNet(
        growth_rate,
        (n, n, n),
        2 * growth_rate,
        num_classes=num_classes,
        in_chans=in_chans,
        stem="small",
        **kwargs,
    )
    model.default_cfg["input_size"] = (in_chans, *tuple(input_size))
    return model
