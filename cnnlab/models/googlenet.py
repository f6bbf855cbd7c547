"""GoogLeNet / Inception v1 (Szegedy et al. 2014) with its two auxiliary classifiers.

Built with `aux_logits=True` (the default), the model in training mode returns a tuple `(logits, aux1, aux2)` and
carries `aux_loss_weight = 0.3`; a training loop adds the aux losses as
`loss = crit(out[0], y) + model.aux_loss_weight * sum(crit(a, y) for a in out[1:])`. In eval mode (and with
`aux_logits=False`) it returns the logits only. Its "5x5" branch uses 3x3 kernels as torchvision's does (that is
what the 6,624,904 reference count of parameters without aux heads equals); `paper_5x5=True` gives the paper's 5x5.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.models.base import IMAGENET_CFG
from cnnlab.models.classic import is_small
from cnnlab.models.layers import ActSpec, GlobalPool, apply_init, make_activation, make_dropout, make_norm, make_pool
from cnnlab.models.pooled import PooledClassifierNet
from cnnlab.models.registry import register_model


class BasicConv2d(nn.Module):
    """conv (no bias) - BN (eps 0.001) - activation, torchvision's GoogLeNet unit (keys `conv`, `bn`)."""

    def __init__(self, cin: int, cout: int, activation: ActSpec, norm: str, **conv: Any) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=str(norm).lower() == "none", **conv)
        self.bn = make_norm(norm, cout, eps=0.001)
        self.act = make_activation(activation, cout, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class Inception(nn.Module):
    """Four parallel branches (1x1; 1x1-3x3; 1x1-5x5; pool-1x1), concatenated along channels."""

    def __init__(
        self,
        cin: int,
        c1: int,
        c3r: int,
        c3: int,
        c5r: int,
        c5: int,
        pp: int,
        a: ActSpec,
        n: str,
        k5: int = 3,
        pool: str = "max",
    ) -> None:
        super().__init__()
        self.branch1 = BasicConv2d(cin, c1, a, n, kernel_size=1)
        self.branch2 = nn.Sequential(
            BasicConv2d(cin, c3r, a, n, kernel_size=1), BasicConv2d(c3r, c3, a, n, kernel_size=3, padding=1)
        )
        self.branch3 = nn.Sequential(
            BasicConv2d(cin, c5r, a, n, kernel_size=1),
            BasicConv2d(c5r, c5, a, n, kernel_size=k5, padding=k5 // 2),
        )
        self.branch4 = nn.Sequential(
            make_pool(pool, 3, 1, 1, ceil_mode=True), BasicConv2d(cin, pp, a, n, kernel_size=1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class InceptionAux(nn.Module):
    """Auxiliary classifier: avg-pool to 4x4, 1x1 conv 128, dense 1024, dropout 0.7, dense classes."""

    def __init__(self, cin: int, num_classes: int, a: ActSpec, n: str, dropout: float = 0.7) -> None:
        super().__init__()
        self.conv = BasicConv2d(cin, 128, a, n, kernel_size=1)
        self.fc1 = nn.Linear(2048, 1024)
        self.act = make_activation(a, 1024, inplace=True)
        self.dropout = make_dropout(dropout)
        self.fc2 = nn.Linear(1024, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(F.adaptive_avg_pool2d(x, (4, 4))).flatten(1)
        return self.fc2(self.dropout(self.act(self.fc1(x))))


# (in, 1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool proj) for 3a 3b | 4a..4e | 5a 5b
_INCEPTION = {
    "3a": (192, 64, 96, 128, 16, 32, 32),
    "3b": (256, 128, 128, 192, 32, 96, 64),
    "4a": (480, 192, 96, 208, 16, 48, 64),
    "4b": (512, 160, 112, 224, 24, 64, 64),
    "4c": (512, 128, 128, 256, 24, 64, 64),
    "4d": (512, 112, 144, 288, 32, 64, 64),
    "4e": (528, 256, 160, 320, 32, 128, 128),
    "5a": (832, 256, 160, 320, 32, 128, 128),
    "5b": (832, 384, 192, 384, 48, 128, 128),
}


class GoogLeNet(PooledClassifierNet):
    """Szegedy et al. 2014 (Inception v1) in torchvision's layout; the module docstring explains aux heads."""

    aux_loss_weight = 0.3

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        small_input: bool = False,
        aux_logits: bool = True,
        activation: ActSpec = "relu",
        norm: str = "batch",
        dropout: float = 0.2,
        aux_dropout: float = 0.7,
        pool: str = "max",
        paper_5x5: bool = False,
        init: str | float | None = "he_normal",
        bias_init: str | float | None = 0.0,
    ) -> None:
        super().__init__()
        a, n = activation, norm
        if small_input:
            self.conv1 = BasicConv2d(in_chans, 64, a, n, kernel_size=3, padding=1)
            self.maxpool1 = nn.Identity()
        else:
            self.conv1 = BasicConv2d(in_chans, 64, a, n, kernel_size=7, stride=2, padding=3)
            self.maxpool1 = make_pool(pool, 3, 2, ceil_mode=True)
        self.conv2 = BasicConv2d(64, 64, a, n, kernel_size=1)
        self.conv3 = BasicConv2d(64, 192, a, n, kernel_size=3, padding=1)
        self.maxpool2 = make_pool(pool, 3, 2, ceil_mode=True)
        k5 = 5 if paper_5x5 else 3
        for key, cfg in _INCEPTION.items():
            setattr(self, f"inception{key}", Inception(*cfg, a, n, k5, pool))
        self.maxpool3 = make_pool(pool, 3, 2, ceil_mode=True)
        self.maxpool4 = make_pool(pool, 2, 2, ceil_mode=True)
        self.aux_logits = aux_logits
        self.aux1 = InceptionAux(512, num_classes, a, n, aux_dropout) if aux_logits else None
        self.aux2 = InceptionAux(528, num_classes, a, n, aux_dropout) if aux_logits else None
        self.global_pool = GlobalPool("avg")
        self.head_drop = make_dropout(dropout)
        self.fc = nn.Linear(1024, num_classes)
        self.num_classes = num_classes
        apply_init(self, init, bias_init)
        self.default_cfg = {**IMAGENET_CFG, "input_size": (in_chans, 224, 224)}

    def _features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.maxpool1(self.conv1(x))
        x = self.maxpool2(self.conv3(self.conv2(x)))
        x = self.maxpool3(self.inception3b(self.inception3a(x)))
        tap1 = self.inception4a(x)
        tap2 = self.inception4d(self.inception4c(self.inception4b(tap1)))
        x = self.maxpool4(self.inception4e(tap2))
        return self.inception5b(self.inception5a(x)), tap1, tap2

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self._features(x)[0]

    def trunk_modules(self) -> list[tuple[str, nn.Module]]:
        """The main path of `_features` in the order it runs (maxpool3 / maxpool4 are registered after all the
        inceptions but run between them, hence the list); the auxiliary heads are not on it."""
        names = ["conv1", "maxpool1", "conv2", "conv3", "maxpool2", "inception3a", "inception3b", "maxpool3",
                 *(f"inception4{k}" for k in "abcde"), "maxpool4", "inception5a", "inception5b"]
        return [(n, getattr(self, n)) for n in names]

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        feats, tap1, tap2 = self._features(x)
        logits = self.forward_head(feats)
        if self.training and self.aux_logits:
            return logits, self.aux1(tap1), self.aux2(tap2)
        return logits

    def reset_classifier(self, num_classes: int) -> None:
        super().reset_classifier(num_classes)
        for aux in (self.aux1, self.aux2):
            if aux is not None and num_classes > 0:
                aux.fc2 = nn.Linear(aux.fc2.in_features, num_classes)

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """stem (conv1-3), blocks (inception3a..5b, in order; by stage 3/4/5 when coarse), head (aux, fc)."""
        order = {k: i for i, k in enumerate(_INCEPTION)}
        return {
            "stem": r"^conv[123]\.",
            "blocks": r"^inception(\d)" if coarse else [(rf"^inception{k}\.", (i,)) for k, i in order.items()],
            "head": r"^aux[12]\.|^fc\.",
        }


@register_model("googlenet")
def googlenet(
    num_classes: int, in_chans: int = 3, input_size=(224, 224), small_input: bool | None = None, **kwargs: Any
) -> GoogLeNet:
    """GoogLeNet / Inception v1 with two auxiliary classifiers (train-mode output (logits, aux1, aux2))."""
    small = is_small(tuple(input_size), small_input)
    model = GoogLeNet(num_classes, in_chans, small_input=small, **kwargs)
    if small:
        model.default_cfg["input_size"] = (in_chans, *tuple(input_size))
    return model


__all__ = ["GoogLeNet", "Inception", "InceptionAux"]
