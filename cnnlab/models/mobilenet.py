"""MobileNetV1 (Howard et al. 2017): depthwise-separable convolutions, a width multiplier, any activation.

The layout is biubug6/Pytorch_Retinaface's, so its ImageNet checkpoint (width 0.25, LeakyReLU(0.1);
`weights/mobilenetV1X0.25_pretrain.tar`) loads strictly:
`stage1` = [conv_bn(3->32w, s2), dw(32w->64w), dw(->128w, s2), dw(128w), dw(->256w, s2), dw(256w)],
`stage2` = [dw(->512w, s2), 5 x dw(512w)], `stage3` = [dw(->1024w, s2), dw(1024w)], global pool, `fc`.
conv_bn is Sequential(conv3x3, BN, act) (keys .0 .1); dw is Sequential(depthwise 3x3, BN, act, 1x1, BN, act)
(keys .0 .1 .3 .4). Width 1.0 has 4,231,976 parameters for 1000 classes, width 0.25 has 475,544.
For inputs of 64 px or less (or `small_input=True`) the first conv has stride 1.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.models.base import IMAGENET_CFG
from cnnlab.models.layers import ActSpec, GlobalPool, apply_init, make_activation, make_dropout, make_norm
from cnnlab.models.pooled import PooledClassifierNet
from cnnlab.models.registry import register_model

# (output channels at width 1.0, stride) for each depthwise-separable block, grouped by stage
_STAGES = (
    ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1)),
    ((512, 2), (512, 1), (512, 1), (512, 1), (512, 1), (512, 1)),
    ((1024, 2), (1024, 1)),
)


class MobileNetV1(PooledClassifierNet):
    """MobileNetV1 with width multiplier `width` (channels scaled, at least 8) and activation `activation`."""

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        width: float = 1.0,
        activation: ActSpec = "relu",
        norm: str = "batch",
        dropout: float = 0.0,
        small_input: bool = False,
        init: str | float | None = "he_normal",
        bias_init: str | float | None = 0.0,
    ) -> None:
        super().__init__()
        if not 0 < width <= 4:
            raise CnnlabError(f"mobilenet_v1 width must be in (0, 4], got {width}")
        self.activation, self.norm = activation, norm
        make_norm(norm, 1)
        make_activation(activation, 1)

        def ch(c: int) -> int:
            return max(8, int(c * width))

        c = ch(32)
        stage1: list[nn.Module] = [self._conv_bn(in_chans, c, 1 if small_input else 2)]
        stages = [stage1, [], []]
        for i, blocks in enumerate(_STAGES):
            for cout, stride in blocks:
                stages[i].append(self._conv_dw(c, ch(cout), stride))
                c = ch(cout)
        self.stage1, self.stage2, self.stage3 = (nn.Sequential(*s) for s in stages)
        self.global_pool = GlobalPool("avg")
        self.head_drop = make_dropout(dropout)
        self.fc = nn.Linear(c, num_classes)
        self.num_classes = num_classes
        apply_init(self, init, bias_init)
        self.default_cfg = {**IMAGENET_CFG, "input_size": (in_chans, 224, 224)}

    def _act(self, channels: int) -> nn.Module:
        return make_activation(self.activation, channels, inplace=True)

    def _conv_bn(self, cin: int, cout: int, stride: int) -> nn.Sequential:
        bias = str(self.norm).lower() == "none"
        return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=bias), make_norm(self.norm, cout), self._act(cout))

    def _conv_dw(self, cin: int, cout: int, stride: int) -> nn.Sequential:
        bias = str(self.norm).lower() == "none"
        return nn.Sequential(
            nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=bias),
            make_norm(self.norm, cin),
            self._act(cin),
            nn.Conv2d(cin, cout, 1, 1, 0, bias=bias),
            make_norm(self.norm, cout),
            self._act(cout),
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stage3(self.stage2(self.stage1(x)))

    def trunk_modules(self) -> list[tuple[str, nn.Module]]:
        """stage1, stage2, stage3 (the stem conv is stage1.0)."""
        return [("stage1", self.stage1), ("stage2", self.stage2), ("stage3", self.stage3)]

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """stem (the first conv), blocks (stage<i>.<j>, or stage<i> when coarse), head (fc)."""
        return {
            "stem": r"^stage1\.0\.",
            "blocks": r"^stage(\d+)" if coarse else r"^stage(\d+)\.(\d+)",
            "head": r"^fc\.",
        }


@register_model("mobilenet_v1")
def mobilenet_v1(
    num_classes: int,
    in_chans: int = 3,
    input_size=(224, 224),
    width: float = 1.0,
    activation: ActSpec = "relu",
    slope: float | None = None,
    small_input: bool | None = None,
    **kwargs: Any,
) -> MobileNetV1:
    """MobileNetV1: width multiplier (width=0.25..1.0), activation='relu' or 'leaky_relu' with slope=0.1."""
    if slope is not None:
        if not (isinstance(activation, str) and activation.lower().startswith("leaky")):
            raise CnnlabError("slope= applies to activation='leaky_relu' only")
        activation = f"leaky_relu:{slope}"
    small = min(input_size) <= 64 if small_input is None else bool(small_input)
    model = MobileNetV1(num_classes, in_chans, width, activation, small_input=small, **kwargs)
    if small:
        model.default_cfg["input_size"] = (in_chans, *tuple(input_size))
    return model
