"""The ImageNet-era classics: AlexNet and VGG-11/13/16/19 (with and without batch norm); GoogLeNet: googlenet.py.

At their ImageNet settings the parameter counts equal torchvision's (alexnet 61,100,840; vgg16 138,357,544;
googlenet without aux heads 6,624,904). For inputs of 64 px or less (or `small_input=True`) each uses a
small-input variant: 3x3 stride-1 first convolutions, fewer poolings, and narrower dense layers.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from cnnlab.models.base import IMAGENET_CFG, ClassifierNet
from cnnlab.models.layers import (
    ActSpec,
    GlobalPool,
    apply_init,
    make_activation,
    make_dropout,
    make_norm,
    make_pool,
)
from cnnlab.models.registry import register_model


def is_small(input_size: tuple[int, int], small_input: bool | None) -> bool:
    return min(input_size) <= 64 if small_input is None else bool(small_input)


def _conv_block(
    cin: int, cout: int, kernel: int, stride: int, padding: int, norm: str, activation: ActSpec
) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, stride, padding)]
    if str(norm).lower() != "none":
        layers.append(make_norm(norm, cout))
    return layers + [make_activation(activation, cout, inplace=True)]


def _dense_head(
    pool: tuple[int, int] | None,
    in_features: int,
    hidden: int,
    num_classes: int,
    activation: ActSpec,
    dropout: float,
    dropout_first: bool,
) -> nn.Sequential:
    """[pool] - flatten - (dropout) - dense - act - (dropout) - dense - act - dense (AlexNet / VGG heads)."""
    layers: list[nn.Module] = [nn.AdaptiveAvgPool2d(pool) if pool else GlobalPool("avg"), nn.Flatten()]
    width = in_features
    for _ in range(2):
        dense = [nn.Linear(width, hidden), make_activation(activation, hidden, inplace=True)]
        drop = [make_dropout(dropout)] if dropout else []
        layers += drop + dense if dropout_first else dense + drop
        width = hidden
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


class AlexNet(ClassifierNet):
    """Krizhevsky et al. 2012 (torchvision's single-tower version): 5 convs, 3 max-pools, 2 x 4096 dense."""

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        small_input: bool = False,
        activation: ActSpec = "relu",
        norm: str = "none",
        dropout: float = 0.5,
        pool: str = "max",
        hidden: int | None = None,
        init: str | float | None = "default",
        bias_init: str | float | None = None,
    ) -> None:
        super().__init__()
        if small_input:
            k1, s1, p1, k2, p2, pk, ps, out = 3, 1, 1, 3, 1, 2, 2, (2, 2)
        else:
            k1, s1, p1, k2, p2, pk, ps, out = 11, 4, 2, 5, 2, 3, 2, (6, 6)
        a, n = activation, norm
        self.features = nn.Sequential(
            *_conv_block(in_chans, 64, k1, s1, p1, n, a),
            make_pool(pool, pk, ps),
            *_conv_block(64, 192, k2, 1, p2, n, a),
            make_pool(pool, pk, ps),
            *_conv_block(192, 384, 3, 1, 1, n, a),
            *_conv_block(384, 256, 3, 1, 1, n, a),
            *_conv_block(256, 256, 3, 1, 1, n, a),
            make_pool(pool, pk, ps),
        )
        hidden = hidden or (1024 if small_input else 4096)
        self.head = _dense_head(out, 256 * out[0] * out[1], hidden, num_classes, a, dropout, dropout_first=True)
        self.num_classes = num_classes
        apply_init(self, init, bias_init)
        self.default_cfg = {**IMAGENET_CFG, "input_size": (in_chans, 224, 224)}


VGG_CFGS: dict[int, list[int | str]] = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    19: [
        64,
        64,
        "M",
        128,
        128,
        "M",
        256,
        256,
        256,
        256,
        "M",
        512,
        512,
        512,
        512,
        "M",
        512,
        512,
        512,
        512,
        "M",
    ],
}


class VGG(ClassifierNet):
    """Simonyan & Zisserman 2014: stacks of 3x3 convs between 2x2 max-pools, then 2 x 4096 dense layers.

    The small-input variant drops the last pool and uses global average pooling and 512-wide dense layers.
    """

    def __init__(
        self,
        depth: int = 16,
        num_classes: int = 1000,
        in_chans: int = 3,
        small_input: bool = False,
        activation: ActSpec = "relu",
        norm: str = "none",
        dropout: float = 0.5,
        pool: str = "max",
        hidden: int | None = None,
        init: str | float | None = "he_normal",
        bias_init: str | float | None = 0.0,
    ) -> None:
        super().__init__()
        cfg = list(VGG_CFGS[depth])
        if small_input:
            cfg = cfg[:-1]
        layers: list[nn.Module] = []
        cin = in_chans
        for v in cfg:
            if v == "M":
                layers.append(make_pool(pool, 2, 2))
            else:
                layers += _conv_block(cin, int(v), 3, 1, 1, norm, activation)
                cin = int(v)
        self.features = nn.Sequential(*layers)
        hidden = hidden or (512 if small_input else 4096)
        pool_out = None if small_input else (7, 7)
        in_features = 512 if small_input else 512 * 7 * 7
        self.head = _dense_head(pool_out, in_features, hidden, num_classes, activation, dropout, dropout_first=False)
        self.num_classes = num_classes
        apply_init(self, init, bias_init)
        self.default_cfg = {**IMAGENET_CFG, "input_size": (in_chans, 224, 224)}


def _build_classic(cls: type, num_classes: int, in_chans: int = 3, input_size=(224, 224),
                   small_input: bool | None = None, **kwargs: Any) -> nn.Module:
    small = is_small(tuple(input_size), small_input)
    model = cls(num_classes=num_classes, in_chans=in_chans, small_input=small, **kwargs)
    if small:
        model.default_cfg["input_size"] = (in_chans, *tuple(input_size))
    return model


def _vgg(depth: int, num_classes: int, kwargs: dict[str, Any], **fixed: Any) -> nn.Module:
    return _build_classic(VGG, num_classes, **{**kwargs, "depth": depth, **fixed})


@register_model("alexnet")
def alexnet(num_classes: int, **kwargs: Any) -> nn.Module:
    """AlexNet (2012): 5 convs, 3 max-pools, 4096-4096 dense, dropout 0.5"""
    return _build_classic(AlexNet, num_classes, **kwargs)


@register_model("vgg11")
def vgg11(num_classes: int, **kwargs: Any) -> nn.Module:
    """VGG-11: 3x3 convs and 2x2 max-pools, 4096-4096 dense"""
    return _vgg(11, num_classes, kwargs)


@register_model("vgg11_bn")
def vgg11_bn(num_classes: int, **kwargs: Any) -> nn.Module:
    """VGG-11 with batch norm after each conv"""
    return _vgg(11, num_classes, kwargs, norm="batch")


@register_model("vgg13")
def vgg13(num_classes: int, **kwargs: Any) -> nn.Module:
    """VGG-13: 3x3 convs and 2x2 max-pools, 4096-4096 dense"""
    return _vgg(13, num_classes, kwargs)


@register_model("vgg13_bn")
def vgg13_bn(num_classes: int, **kwargs: Any) -> nn.Module:
    """VGG-13 with batch norm after each conv"""
    return _vgg(13, num_classes, kwargs, norm="batch")


@register_model("vgg16")
def vgg16(num_classes: int, **kwargs: Any) -> nn.Module:
    """VGG-16: 3x3 convs and 2x2 max-pools, 4096-4096 dense"""
    return _vgg(16, num_classes, kwargs)


@register_model("vgg16_bn")
def vgg16_bn(num_classes: int, **kwargs: Any) -> nn.Module:
    """VGG-16 with batch norm after each conv"""
    return _vgg(16, num_classes, kwargs, norm="batch")


@register_model("vgg19")
def vgg19(num_classes: int, **kwargs: Any) -> nn.Module:
    """VGG-19: 3x3 convs and 2x2 max-pools, 4096-4096 dense"""
    return _vgg(19, num_classes, kwargs)


@register_model("vgg19_bn")
def vgg19_bn(num_classes: int, **kwargs: Any) -> nn.Module:
    """VGG-19 with batch norm after each conv"""
    return _vgg(19, num_classes, kwargs, norm="batch")


__all__ = ["AlexNet", "VGG"]
