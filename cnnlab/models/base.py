"""The base class every zoo model derives from: `features` then `head`, with timm's head API.

A model carries its preprocessing (`default_cfg`: mean, std, input size) and its layer groups
(`group_matcher`), so transfer learning and evaluation need no special cases per architecture.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class ClassifierNet(nn.Module):
    """`forward(x) = head(features(x))`. Subclasses build `self.features` and `self.head`.

    `self.head` must end with the classifier layer, reachable as `self.head[-1]` (an nn.Linear),
    so `reset_classifier` can replace it.
    """

    default_cfg: dict[str, Any] = {}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def trunk_modules(self) -> list[tuple[str, nn.Module]]:
        """The modules `forward_features` runs, in order, as (attribute name, module): applied one after the
        other they compute `forward_features` (cnnlab.models.backbone taps the feature maps between them)."""
        return [("features", self.features)]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if pre_logits:
            return self.head[:-1](x)
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.head[-1]

    def reset_classifier(self, num_classes: int) -> None:
        old = self.head[-1]
        self.head[-1] = nn.Linear(old.in_features, num_classes)
        self.num_classes = num_classes

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Layer groups from input to output, in timm's format (regex on parameter names)."""
        return {"stem": r"^features\.0\.", "blocks": r"^features\.(\d+)", "head": r"^head\."}


# The ImageNet statistics that pretrained models expect (torchvision, timm); the default of `--normalize model`.
IMAGENET_CFG = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}


def has_conv(model: nn.Module) -> bool:
    """Whether the model convolves (then channels_last memory pays off)."""
    return any(isinstance(m, nn.Conv2d) for m in model.modules())
