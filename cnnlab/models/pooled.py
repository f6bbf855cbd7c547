"""`PooledClassifierNet`: the ClassifierNet API for networks whose layers keep their published names.

ResNet, DenseNet, GoogLeNet and MobileNet are laid out like their reference code (`conv1`, `layer1`, `fc`;
`stage1`, `fc`; torchvision's `features`, `classifier`), so third-party checkpoints load with strict key
matching. They implement `forward_features` (input -> pre-pool feature map) and name their classifier in
`classifier_attr`; this class supplies the pooled head: global pool -> dropout -> classifier, with
`forward_head(x, pre_logits=True)` returning the pooled "bottleneck features".
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from cnnlab.models.base import ClassifierNet


class PooledClassifierNet(ClassifierNet):
    """ClassifierNet whose head is `global_pool` -> `head_drop` -> `<classifier_attr>` (an nn.Linear)."""

    classifier_attr = "fc"

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def trunk_modules(self) -> list[tuple[str, nn.Module]]:
        raise NotImplementedError

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        x = self.head_drop(x)
        return x if pre_logits else self.get_classifier()(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return getattr(self, self.classifier_attr)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier by a fresh Linear with `num_classes` outputs (0: identity, features out)."""
        old = self.get_classifier()
        new = nn.Linear(old.in_features, num_classes) if num_classes > 0 else nn.Identity()
        new.in_features = old.in_features
        setattr(self, self.classifier_attr, new)
        self.num_classes = num_classes

    @property
    def num_features(self) -> int:
        """Width of the pooled features that feed the classifier."""
        return self.get_classifier().in_features

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        raise NotImplementedError
