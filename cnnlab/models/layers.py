"""Building blocks every zoo model and the layer-spec builder pick by name.

Owns: the activation registry (sigmoid, tanh, relu, leaky_relu, elu, selu, gelu, maxout), the initializer
registry and `apply_init`, `MinPool2d` and the pooling / normalization / dropout factories, and
`weight_decay_groups` (L2 weight decay as an optimizer option).

Names may carry one numeric argument after a colon, which is how the CLI and spec files pass it:
`leaky_relu:0.1` (slope), `elu:0.5` (alpha), `maxout:3` (pieces), `normal:0.01` (std).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.errors import CnnlabError

ActSpec = str | Callable[[], nn.Module] | None


def check_choice(value: str, choices: Iterable[str], what: str) -> str:
    """Return `value` lower-cased if it is one of `choices`, else raise CnnlabError listing them."""
    key = str(value).lower()
    choices = list(choices)
    if key not in choices:
        raise CnnlabError(f"unknown {what} '{value}': choose one of {', '.join(choices)}")
    return key


def split_arg(spec: str, what: str) -> tuple[str, float | None]:
    """Split 'name:0.1' into ('name', 0.1); a bare name gives (name, None)."""
    name, _, arg = str(spec).partition(":")
    if not arg:
        return name.strip().lower(), None
    try:
        return name.strip().lower(), float(arg)
    except ValueError:
        raise CnnlabError(f"bad {what} '{spec}': the part after ':' must be a number, e.g. leaky_relu:0.1") from None


# ----------------------------------------------------------------------------------------------- activations


class Maxout(nn.Module):
    """Maxout (Goodfellow et al. 2013): the max over `pieces` linear pieces of each unit.

    Without `num_features` it is the original form: the layer before emits `pieces * C` channels and this
    takes the max over each group of `pieces` adjacent channels, giving C (the spec builder widens
    that layer).
    With `num_features=C` it is a drop-in activation for fixed-width networks (the zoo models): each unit's
    pre-activation x gets `pieces` learned affine maps a_j * x + b_j and the output is their max. It starts
    as ReLU (pieces x and 0; further pieces start at 0) and learns any convex piecewise-linear shape.
    """

    def __init__(self, pieces: int = 2, num_features: int | None = None) -> None:
        super().__init__()
        if pieces < 2:
            raise CnnlabError(f"maxout needs at least 2 pieces, got {pieces}")
        self.pieces = int(pieces)
        self.num_features = num_features
        if num_features is not None:
            scale = torch.zeros(self.pieces, num_features)
            scale[0] = 1.0
            self.scale = nn.Parameter(scale)
            self.shift = nn.Parameter(torch.zeros(self.pieces, num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.num_features is None:
            n, c = x.shape[:2]
            if c % self.pieces:
                raise CnnlabError(f"maxout with {self.pieces} pieces needs channels divisible by it, got {c}")
            return x.reshape(n, c // self.pieces, self.pieces, *x.shape[2:]).amax(dim=2)
        view = (1, self.pieces, self.num_features) + (1,) * (x.dim() - 2)
        z = x.unsqueeze(1) * self.scale.view(view) + self.shift.view(view)
        return z.amax(dim=1)

    def extra_repr(self) -> str:
        return f"pieces={self.pieces}, num_features={self.num_features}"


_ACT_DEFAULT_ARG = {"leaky_relu": 0.01, "elu": 1.0, "maxout": 2}
_ACT_ALIASES = {"leakyrelu": "leaky_relu", "lrelu": "leaky_relu", "linear": "identity", "none": "identity"}
ACTIVATIONS = ("sigmoid", "tanh", "relu", "leaky_relu", "elu", "selu", "gelu", "maxout", "identity")


def make_activation(spec: ActSpec = "relu", channels: int | None = None, inplace: bool = False) -> nn.Module:
    """Build an activation module from a name like 'relu', 'leaky_relu:0.1', 'elu', 'maxout:2'.

    Args:
        spec: an activation name (optionally ':arg'), a zero-argument module factory, or None (identity).
        channels: the unit count where the activation sits; a drop-in maxout needs it (see `Maxout`).
        inplace: let relu / leaky_relu / elu / selu overwrite their input (saves memory after a norm layer).
    """
    if spec is None:
        return nn.Identity()
    if callable(spec) and not isinstance(spec, str):
        return spec()
    name, arg = split_arg(spec, "activation")
    name = check_choice(_ACT_ALIASES.get(name, name), ACTIVATIONS, "activation")
    arg = _ACT_DEFAULT_ARG.get(name) if arg is None else arg
    if name == "leaky_relu":
        return nn.LeakyReLU(arg, inplace=inplace)
    if name == "elu":
        return nn.ELU(arg, inplace=inplace)
    if name == "maxout":
        return Maxout(int(arg), channels)
    simple = {"sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "gelu": nn.GELU, "identity": nn.Identity}
    if name in simple:
        return simple[name]()
    return {"relu": nn.ReLU, "selu": nn.SELU}[name](inplace=inplace)


# ---------------------------------------------------------------------------------------------- initializers


def _lecun_normal(t: torch.Tensor, arg: float | None) -> None:
    fan_in, _ = nn.init._calculate_fan_in_and_fan_out(t)
    nn.init.normal_(t, 0.0, 1.0 / math.sqrt(fan_in))


INITIALIZERS: dict[str, Callable[[torch.Tensor, float | None], Any]] = {
    "zeros": lambda t, a: nn.init.zeros_(t),
    "normal": lambda t, a: nn.init.normal_(t, 0.0, 0.01 if a is None else a),
    "xavier_uniform": lambda t, a: nn.init.xavier_uniform_(t),
    "xavier_normal": lambda t, a: nn.init.xavier_normal_(t),
    "he_uniform": lambda t, a: nn.init.kaiming_uniform_(t, a=a or 0.0, nonlinearity="leaky_relu"),
    "he_normal": lambda t, a: nn.init.kaiming_normal_(t, a=a or 0.0, nonlinearity="leaky_relu"),
    "lecun_normal": _lecun_normal,
}
_INIT_ALIASES = {
    "glorot_uniform": "xavier_uniform",
    "glorot_normal": "xavier_normal",
    "kaiming_uniform": "he_uniform",
    "kaiming_normal": "he_normal",
    "zero": "zeros",
}
INIT_CHOICES = tuple(INITIALIZERS) + tuple(_INIT_ALIASES) + ("default",)


def init_tensor(tensor: torch.Tensor, spec: str | float) -> None:
    """Initialise one tensor in place: a name from INIT_CHOICES ('normal:0.01' sets the std; 'he_normal:0.1'
    the leaky slope) or a number (a constant, e.g. a bias of 0.01)."""
    if isinstance(spec, (int, float)):
        nn.init.constant_(tensor, float(spec))
        return
    name, arg = split_arg(spec, "initializer")
    try:
        nn.init.constant_(tensor, float(name))  # "0.01" from a command line
        return
    except ValueError:
        pass
    name = check_choice(_INIT_ALIASES.get(name, name), INITIALIZERS, "initializer")
    with torch.no_grad():
        INITIALIZERS[name](tensor, arg)


def apply_init(
    model: nn.Module,
    weight: str | float | None = "he_normal",
    bias: str | float | None = 0.0,
    layer_types: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear),
) -> nn.Module:
    """Initialise every conv and dense layer of `model`: weights by `weight`, biases by `bias`.

    Args:
        model: the network (modified in place, and returned).
        weight: an initializer name (see INIT_CHOICES) or a constant; None or 'default' keeps PyTorch's.
        bias: a constant (e.g. 0.01, the notes' dead-ReLU advice) or an initializer name; None keeps it.
        layer_types: which module types to touch.
    """
    if isinstance(weight, str) and weight.lower() == "default":
        weight = None
    if weight is not None and not isinstance(weight, (int, float)):
        init_tensor(torch.empty(2, 2), weight)  # validate the name before touching the model
    for m in model.modules():
        if not isinstance(m, layer_types):
            continue
        if weight is not None:
            init_tensor(m.weight, weight)
        if bias is not None and getattr(m, "bias", None) is not None:
            init_tensor(m.bias, bias)
    return model


# ---------------------------------------------------------------------------------- pooling, norm, dropout


class MinPool2d(nn.Module):
    """Min pooling, the third pooling of the notes: min over each window, computed as -maxpool(-x)."""

    def __init__(self, kernel_size: int, stride: int | None = None, padding: int = 0, ceil_mode: bool = False):
        super().__init__()
        self.pool = nn.MaxPool2d(kernel_size, stride, padding, ceil_mode=ceil_mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -self.pool(-x)


POOLS = ("max", "avg", "min")


def make_pool(
    kind: str = "max",
    kernel_size: int = 2,
    stride: int | None = None,
    padding: int = 0,
    ceil_mode: bool = False,
) -> nn.Module:
    """A pooling layer by kind: 'max', 'avg' (also 'average') or 'min'."""
    kind = check_choice({"average": "avg", "mean": "avg"}.get(str(kind).lower(), kind), POOLS, "pool")
    if kind == "max":
        return nn.MaxPool2d(kernel_size, stride, padding, ceil_mode=ceil_mode)
    if kind == "avg":
        return nn.AvgPool2d(kernel_size, stride, padding, ceil_mode=ceil_mode, count_include_pad=False)
    return MinPool2d(kernel_size, stride, padding, ceil_mode)


class GlobalPool(nn.Module):
    """Global pooling to one value per channel, flattened to (N, C): 'avg' (default), 'max' or 'min'."""

    def __init__(self, kind: str = "avg") -> None:
        super().__init__()
        self.kind = check_choice(kind, POOLS, "global pool")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            return x
        if self.kind == "avg":
            return F.adaptive_avg_pool2d(x, 1).flatten(1)
        if self.kind == "max":
            return F.adaptive_max_pool2d(x, 1).flatten(1)
        return -F.adaptive_max_pool2d(-x, 1).flatten(1)


NORMS = ("batch", "none")


def make_norm(kind: str, num_features: int, dims: int = 2, eps: float = 1e-5) -> nn.Module:
    """Batch norm ('batch'/'bn') over `num_features` (dims=2: images, 1: vectors), or 'none' (identity)."""
    kind = check_choice(
        {"bn": "batch", "batchnorm": "batch", "identity": "none"}.get(str(kind).lower(), kind), NORMS, "norm"
    )
    if kind == "none":
        return nn.Identity()
    return (nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d)(num_features, eps=eps)


def make_dropout(p: float = 0.0, kind: str = "dropout") -> nn.Module:
    """Dropout with rate `p` ('dropout', or 'alpha' for SELU networks); p=0 gives identity."""
    kind = check_choice(
        {"alpha_dropout": "alpha", "alphadropout": "alpha"}.get(str(kind).lower(), kind),
        ("dropout", "alpha"),
        "dropout kind",
    )
    if not 0.0 <= float(p) < 1.0:
        raise CnnlabError(f"dropout rate must be in [0, 1), got {p}")
    if not p:
        return nn.Identity()
    return nn.AlphaDropout(p) if kind == "alpha" else nn.Dropout(p)


def weight_decay_groups(model: nn.Module, weight_decay: float, skip_norm_and_bias: bool = True) -> list[dict]:
    """Optimizer parameter groups for L2 weight decay: decay on weights, none on biases and norm scales.

    Pass the result to any torch optimizer, e.g. `torch.optim.SGD(weight_decay_groups(model, 5e-4), lr=0.1)`.
    """
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if skip_norm_and_bias and (p.dim() <= 1 or name.endswith(".bias")) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]

