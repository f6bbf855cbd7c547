"""Residual networks (He et al. 2016): ImageNet ResNet-18/34/50/101/152, CIFAR ResNet-20/32/44/56/110 and
the pre-activation (BN-ReLU-Conv) variant.

Layouts follow the reference code so checkpoints load strictly by key:
- ImageNet models use torchvision's names (`conv1`, `bn1`, `layer1.0.conv1`, `downsample`, `fc`) and match its
  parameter counts exactly (resnet18 11,689,512; resnet50 25,557,032). For inputs of 64 px or less (or
  `small_input=True`) the stem becomes a 3x3 stride-1 conv without max-pool.
- CIFAR models use akamaster/pytorch_resnet_cifar10's names (`conv1`, `bn1`, `layer1.0.conv1`, `shortcut`,
  `linear`): 3 stages of 16/32/64 channels, 6n+2 layers, option A (parameter-free: subsample, zero-pad the
  channels) or option B (1x1 conv + BN projection) shortcuts.

Every builder takes activation=, norm=, dropout=, init=, bias_init= (and pool= for the ImageNet stem).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
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


def conv3x3(cin: int, cout: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, 1, bias=bias)


def conv1x1(cin: int, cout: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride, 0, bias=bias)


class PadShortcut(nn.Module):
    """Option A shortcut: keep every `stride`-th pixel, zero-pad the channels up to `cout` (no parameters)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.stride, self.pad = stride, cout - cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))


class _Opts:
    """The per-model choices each block needs: activation, norm kind, and whether convs get a bias."""

    def __init__(self, activation: ActSpec, norm: str) -> None:
        self.activation, self.norm = activation, norm
        make_norm(norm, 1)  # validate early
        make_activation(activation, 1)
        self.bias = str(norm).lower() == "none"

    def act(self, channels: int) -> nn.Module:
        return make_activation(self.activation, channels, inplace=True)

    def bn(self, channels: int) -> nn.Module:
        return make_norm(self.norm, channels)


def _shortcut(cin: int, cout: int, stride: int, kind: str, o: _Opts, with_norm: bool = True) -> nn.Module | None:
    if stride == 1 and cin == cout:
        return None
    if kind == "A":
        return PadShortcut(cin, cout, stride)
    if not with_norm:
        return nn.Sequential(conv1x1(cin, cout, stride, bias=o.bias))
    return nn.Sequential(conv1x1(cin, cout, stride, bias=o.bias), o.bn(cout))


class BasicBlock(nn.Module):
    """conv3x3-BN-act-conv3x3-BN, plus the shortcut, then act (ResNet-18/34 and the CIFAR ResNets)."""

    expansion = 1

    def __init__(
        self,
        cin: int,
        planes: int,
        stride: int,
        o: _Opts,
        shortcut: str = "B",
        shortcut_attr: str = "downsample",
    ) -> None:
        super().__init__()
        self.conv1, self.bn1, self.act1 = conv3x3(cin, planes, stride, o.bias), o.bn(planes), o.act(planes)
        self.conv2, self.bn2 = conv3x3(planes, planes, 1, o.bias), o.bn(planes)
        self.shortcut_attr = shortcut_attr
        setattr(self, shortcut_attr, _shortcut(cin, planes, stride, shortcut, o))
        self.act2 = o.act(planes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sc = getattr(self, self.shortcut_attr)
        identity = x if sc is None else sc(x)
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (with the stride: torchvision's v1.5), 1x1 expand x4, plus shortcut (ResNet-50+)."""

    expansion = 4

    def __init__(
        self,
        cin: int,
        planes: int,
        stride: int,
        o: _Opts,
        shortcut: str = "B",
        shortcut_attr: str = "downsample",
    ) -> None:
        super().__init__()
        cout = planes * self.expansion
        self.conv1, self.bn1, self.act1 = conv1x1(cin, planes, 1, o.bias), o.bn(planes), o.act(planes)
        self.conv2, self.bn2, self.act2 = conv3x3(planes, planes, stride, o.bias), o.bn(planes), o.act(planes)
        self.conv3, self.bn3 = conv1x1(planes, cout, 1, o.bias), o.bn(cout)
        self.shortcut_attr = shortcut_attr
        setattr(self, shortcut_attr, _shortcut(cin, cout, stride, shortcut, o))
        self.act3 = o.act(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sc = getattr(self, self.shortcut_attr)
        identity = x if sc is None else sc(x)
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.act2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.act3(out + identity)


class PreActBlock(nn.Module):
    """Pre-activation basic block (He et al. 2016b): BN-act-conv3x3-BN-act-conv3x3, plus identity."""

    expansion = 1

    def __init__(
        self,
        cin: int,
        planes: int,
        stride: int,
        o: _Opts,
        shortcut: str = "B",
        shortcut_attr: str = "shortcut",
    ) -> None:
        super().__init__()
        self.bn1, self.act1, self.conv1 = o.bn(cin), o.act(cin), conv3x3(cin, planes, stride, o.bias)
        self.bn2, self.act2, self.conv2 = o.bn(planes), o.act(planes), conv3x3(planes, planes, 1, o.bias)
        self.shortcut_attr = shortcut_attr
        setattr(self, shortcut_attr, _shortcut(cin, planes, stride, shortcut, o, with_norm=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(x))
        sc = getattr(self, self.shortcut_attr)
        # a projection sees the pre-activated input (as in the paper); option A pads the raw input
        identity = x if sc is None else sc(x if isinstance(sc, PadShortcut) else out)
        out = self.conv1(out)
        out = self.conv2(self.act2(self.bn2(out)))
        return out + identity


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck, "preact": PreActBlock}


class ResNet(PooledClassifierNet):
    """A ResNet: stem, stages `layer1..N` of residual blocks, global average pool, classifier.

    Args:
        block: 'basic', 'bottleneck' or 'preact'.
        layers: blocks per stage, e.g. (2, 2, 2, 2) for ResNet-18 or (3, 3, 3) for ResNet-20.
        widths: planes per stage, e.g. (64, 128, 256, 512) or (16, 32, 64).
        stem: 'imagenet' (7x7 stride 2 + 3x3 max-pool) or 'small' (3x3 stride 1, no pool).
        shortcut: 'B' (1x1 conv projection where shapes change) or 'A' (zero-pad, no parameters).
        cifar_names: akamaster's names (`shortcut`, `linear`) instead of torchvision's (`downsample`, `fc`).
    """

    def __init__(
        self,
        block: str,
        layers: tuple[int, ...],
        widths: tuple[int, ...],
        num_classes: int = 1000,
        in_chans: int = 3,
        stem: str = "imagenet",
        shortcut: str = "B",
        cifar_names: bool = False,
        activation: ActSpec = "relu",
        norm: str = "batch",
        dropout: float = 0.0,
        pool: str = "max",
        init: str | float | None = "he_normal",
        bias_init: str | float | None = 0.0,
    ) -> None:
        super().__init__()
        shortcut = str(shortcut).upper()
        if shortcut not in ("A", "B"):
            raise CnnlabError(f"unknown shortcut '{shortcut}': choose A (zero-pad) or B (projection)")
        if block not in BLOCKS:
            raise CnnlabError(f"unknown block '{block}': choose one of {', '.join(BLOCKS)}")
        o, cls = _Opts(activation, norm), BLOCKS[block]
        self.preact = block == "preact"
        self.classifier_attr = "linear" if cifar_names else "fc"
        w0 = widths[0]
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_chans, w0, 7, 2, 3, bias=o.bias)
        else:
            self.conv1 = conv3x3(in_chans, w0, 1, o.bias)
        with_stem_norm = not (self.preact and stem != "imagenet")
        self.bn1 = o.bn(w0) if with_stem_norm else nn.Identity()
        self.act1 = o.act(w0) if with_stem_norm else nn.Identity()
        self.maxpool = make_pool(pool, 3, 2, 1) if stem == "imagenet" else nn.Identity()
        cin, sc_attr = w0, "shortcut" if (cifar_names or self.preact) else "downsample"
        self.num_stages = len(layers)
        for i, (n, planes) in enumerate(zip(layers, widths)):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(cls(cin, planes, stride, o, shortcut, sc_attr))
                cin = planes * cls.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.bn_final = o.bn(cin) if self.preact else nn.Identity()
        self.act_final = o.act(cin) if self.preact else nn.Identity()
        self.global_pool = GlobalPool("avg")
        self.head_drop = make_dropout(dropout)
        setattr(self, self.classifier_attr, nn.Linear(cin, num_classes))
        self.num_classes = num_classes
        apply_init(self, init, bias_init)
        self.default_cfg = dict(IMAGENET_CFG)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.act_final(self.bn_final(x))

    def trunk_modules(self) -> list[tuple[str, nn.Module]]:
        """stem, layer1..N, the final norm (pre-activation models; identity otherwise): `forward_features`."""
        names = ["conv1", "bn1", "act1", "maxpool"] + [f"layer{i + 1}" for i in range(self.num_stages)]
        return [(n, getattr(self, n)) for n in names + ["bn_final", "act_final"]]

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """stem (conv1, bn1), blocks (layer<i>.<j>; layer<i> when coarse), head (final norm, classifier)."""
        return {
            "stem": r"^conv1\.|^bn1\.",
            "blocks": r"^layer(\d+)" if coarse else r"^layer(\d+)\.(\d+)",
            "head": rf"^bn_final\.|^{self.classifier_attr}\.",
        }


def _small(input_size: tuple[int, int], small_input: bool | None) -> bool:
    return min(input_size) <= 64 if small_input is None else bool(small_input)


def _imagenet_resnet(
    block: str,
    layers: tuple[int, ...],
    num_classes: int,
    in_chans: int,
    input_size: tuple[int, int],
    small_input: bool | None,
    size: int,
    **kwargs: Any,
) -> ResNet:
    small = _small(input_size, small_input)
    model = ResNet(
        block,
        layers,
        (64, 128, 256, 512),
        num_classes,
        in_chans,
        stem="small" if small else "imagenet",
        **kwargs,
    )
    model.default_cfg["input_size"] = (in_chans, *input_size) if small else (in_chans, size, size)
    return model


def _imagenet_builder(block: str, layers: tuple[int, ...], num_classes: int, in_chans: int = 3,
                      input_size=(224, 224), small_input: bool | None = None, **kwargs: Any) -> ResNet:
    return _imagenet_resnet(block, layers, num_classes, in_chans, tuple(input_size), small_input, 224, **kwargs)


@register_model("resnet18")
def resnet18(num_classes: int, **kwargs: Any) -> ResNet:
    """ResNet-18 (basic blocks (2, 2, 2, 2)); 3x3 stem without max-pool for inputs <= 64 px"""
    return _imagenet_builder("basic", (2, 2, 2, 2), num_classes, **kwargs)


@register_model("resnet34")
def resnet34(num_classes: int, **kwargs: Any) -> ResNet:
    """ResNet-34 (basic blocks (3, 4, 6, 3)); 3x3 stem without max-pool for inputs <= 64 px"""
    return _imagenet_builder("basic", (3, 4, 6, 3), num_classes, **kwargs)


@register_model("resnet50")
def resnet50(num_classes: int, **kwargs: Any) -> ResNet:
    """ResNet-50 (bottleneck blocks (3, 4, 6, 3)); 3x3 stem without max-pool for inputs <= 64 px"""
    return _imagenet_builder("bottleneck", (3, 4, 6, 3), num_classes, **kwargs)


@register_model("resnet101")
def resnet101(num_classes: int, **kwargs: Any) -> ResNet:
    """ResNet-101 (bottleneck blocks (3, 4, 23, 3)); 3x3 stem without max-pool for inputs <= 64 px"""
    return _imagenet_builder("bottleneck", (3, 4, 23, 3), num_classes, **kwargs)


@register_model("resnet152")
def resnet152(num_classes: int, **kwargs: Any) -> ResNet:
    """ResNet-152 (bottleneck blocks (3, 8, 36, 3)); 3x3 stem without max-pool for inputs <= 64 px"""
    return _imagenet_builder("bottleneck", (3, 8, 36, 3), num_classes, **kwargs)


@register_model("preact_resnet18")
def preact_resnet18(num_classes: int, **kwargs: Any) -> ResNet:
    """pre-activation ResNet-18 (preact blocks (2, 2, 2, 2)); 3x3 stem without max-pool for inputs <= 64 px"""
    return _imagenet_builder("preact", (2, 2, 2, 2), num_classes, **kwargs)


@register_model("preact_resnet34")
def preact_resnet34(num_classes: int, **kwargs: Any) -> ResNet:
    """pre-activation ResNet-34 (preact blocks (3, 4, 6, 3)); 3x3 stem without max-pool for inputs <= 64 px"""
    return _imagenet_builder("preact", (3, 4, 6, 3), num_classes, **kwargs)


def cifar_resnet(
    depth: int,
    num_classes: int = 10,
    in_chans: int = 3,
    shortcut: str = "A",
    preact: bool = False,
    width: int = 16,
    **kwargs: Any,
) -> ResNet:
    """The CIFAR ResNet of He et al. 2016 with `depth` = 6n+2 layers (20, 32, 44, 56, 110, ...)."""
    if (depth - 2) % 6 or depth < 8:
        raise CnnlabError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110), got {depth}")
    n = (depth - 2) // 6
    model = ResNet(
        "preact" if preact else "basic",
        (n, n, n),
        (width, 2 * width, 4 * width),
        num_classes,
        in_chans,
        stem="small",
        shortcut=shortcut,
        cifar_names=True,
        **kwargs,
    )
    model.default_cfg["input_size"] = (in_chans, 32, 32)
    return model


def _cifar_builder(depth: int, default_preact: bool, num_classes: int, in_chans: int = 3, input_size=(32, 32),
                   **kwargs: Any) -> ResNet:
    kwargs.setdefault("preact", default_preact)
    return cifar_resnet(depth, num_classes, in_chans, **kwargs)


@register_model("resnet20")
def resnet20(num_classes: int, **kwargs: Any) -> ResNet:
    """CIFAR ResNet-20: 16/32/64 channels, shortcut='A' (zero-pad) or 'B' (projection)"""
    return _cifar_builder(20, False, num_classes, **kwargs)


@register_model("resnet32")
def resnet32(num_classes: int, **kwargs: Any) -> ResNet:
    """CIFAR ResNet-32: 16/32/64 channels, shortcut='A' (zero-pad) or 'B' (projection)"""
    return _cifar_builder(32, False, num_classes, **kwargs)


@register_model("resnet44")
def resnet44(num_classes: int, **kwargs: Any) -> ResNet:
    """CIFAR ResNet-44: 16/32/64 channels, shortcut='A' (zero-pad) or 'B' (projection)"""
    return _cifar_builder(44, False, num_classes, **kwargs)


@register_model("resnet56")
def resnet56(num_classes: int, **kwargs: Any) -> ResNet:
    """CIFAR ResNet-56: 16/32/64 channels, shortcut='A' (zero-pad) or 'B' (projection)"""
    return _cifar_builder(56, False, num_classes, **kwargs)


@register_model("resnet110")
def resnet110(num_classes: int, **kwargs: Any) -> ResNet:
    """CIFAR ResNet-110: 16/32/64 channels, shortcut='A' (zero-pad) or 'B' (projection)"""
    return _cifar_builder(110, False, num_classes, **kwargs)


@register_model("preact_resnet110")
def preact_resnet110(num_classes: int, **kwargs: Any) -> ResNet:
    """CIFAR pre-activation ResNet-110: 16/32/64 channels, shortcut='A' (zero-pad) or 'B' (projection)"""
    return _cifar_builder(110, True, num_classes, **kwargs)
