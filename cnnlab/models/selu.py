"""Self-normalizing networks (Klambauer et al. 2017): SELU activations, AlphaDropout, LeCun-normal init.

With these three together, activations keep zero mean and unit variance through depth without batch norm.
`selu_mlp` is a dense stack on flattened pixels; `selu_cnn` a conv stack (3x3 convs, max-pools, no norm) with
a dense head. Both accept activation= / init= / norm= / dropout= to compare against ReLU + BN, say.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.models.base import ClassifierNet
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


def _dropout_kind(activation: ActSpec, dropout_kind: str | None) -> str:
    if dropout_kind:
        return dropout_kind
    return "alpha" if isinstance(activation, str) and activation.lower() == "selu" else "dropout"


class SeluMLP(ClassifierNet):
    """Flatten, then `hidden` dense layers each followed by SELU and AlphaDropout, then the classifier."""

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 1,
        input_size: tuple[int, int] = (28, 28),
        hidden: tuple[int, ...] = (512, 256, 128),
        activation: ActSpec = "selu",
        dropout: float = 0.05,
        dropout_kind: str | None = None,
        norm: str = "none",
        init: str | float | None = "lecun_normal",
        bias_init: str | float | None = 0.0,
    ) -> None:
        super().__init__()
        if not hidden:
            raise CnnlabError("selu_mlp needs at least one hidden layer, e.g. hidden=(256,)")
        kind = _dropout_kind(activation, dropout_kind)
        self.features = nn.Flatten()
        width = in_chans * input_size[0] * input_size[1]
        layers: list[nn.Module] = []
        for h in hidden:
            layers += [
                nn.Linear(width, h),
                make_norm(norm, h, dims=1),
                make_activation(activation, h),
                make_dropout(dropout, kind),
            ]
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.head = nn.Sequential(*layers)
        self.num_classes = num_classes
        apply_init(self, init, bias_init)
        self.default_cfg = {
            "mean": (0.5,) * in_chans,
            "std": (0.5,) * in_chans,
            "input_size": (in_chans, *input_size),
        }

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """No stem; each dense layer (head.<4i>) is a block; the last Linear is the head."""
        last = len(self.head) - 1
        return {"stem": r"^features\.", "blocks": rf"^head\.(?!{last}\.)(\d+)\.", "head": rf"^head\.{last}\."}


class SeluCNN(ClassifierNet):
    """Conv stages (3x3 'same' convs with SELU, then 2x2 max-pool) and a SELU dense head with AlphaDropout."""

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 1,
        input_size: tuple[int, int] = (28, 28),
        widths: tuple[int, ...] = (32, 64, 128),
        convs_per_stage: int = 2,
        hidden: int = 128,
        activation: ActSpec = "selu",
        dropout: float = 0.05,
        dropout_kind: str | None = None,
        norm: str = "none",
        pool: str = "max",
        init: str | float | None = "lecun_normal",
        bias_init: str | float | None = 0.0,
    ) -> None:
        super().__init__()
        if min(input_size) < 2 ** len(widths):
            raise CnnlabError(
                f"selu_cnn with {len(widths)} stages needs images of at least {2 ** len(widths)} px, got {input_size}"
            )
        kind = _dropout_kind(activation, dropout_kind)
        layers: list[nn.Module] = []
        cin = in_chans
        for w in widths:
            for _ in range(convs_per_stage):
                layers += [
                    nn.Conv2d(cin, w, 3, padding=1),
                    make_norm(norm, w),
                    make_activation(activation, w),
                ]
                cin = w
            layers.append(make_pool(pool, 2, 2))
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            GlobalPool("avg"),
            nn.Linear(cin, hidden),
            make_activation(activation, hidden),
            make_dropout(dropout, kind),
            nn.Linear(hidden, num_classes),
        )
        self.num_classes = num_classes
        apply_init(self, init, bias_init)
        self.default_cfg = {
            "mean": (0.5,) * in_chans,
            "std": (0.5,) * in_chans,
            "input_size": (in_chans, *input_size),
        }


@register_model("selu_mlp")
def selu_mlp(num_classes: int, in_chans: int = 1, input_size=(28, 28), **kwargs: Any) -> SeluMLP:
    """Self-normalizing MLP: dense 512-256-128, SELU, AlphaDropout 0.05, LeCun-normal init."""
    return SeluMLP(num_classes, in_chans, tuple(input_size), **kwargs)


@register_model("selu_cnn")
def selu_cnn(num_classes: int, in_chans: int = 1, input_size=(28, 28), **kwargs: Any) -> SeluCNN:
    """Self-normalizing CNN: 3 stages of 2 SELU 3x3 convs (32/64/128) and max-pools, no batch norm."""
    return SeluCNN(num_classes, in_chans, tuple(input_size), **kwargs)
