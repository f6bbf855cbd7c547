"""The layer-spec builder: a Keras-Sequential-style model written as lines of text or YAML, no code.

One layer per line (the compact form; `;` also separates layers in a one-line string)::

    conv 16 3 same relu        # filters, kernel, then options: same|valid, s2 (stride), an activation, bn
    conv 16 3 same relu
    maxpool 2                  # also avgpool / minpool; `s1` stride, `same` keeps the edge (ceil)
    dropout 0.25               # also alphadropout
    flatten                    # or gap (global average pool); dense layers need a flat input
    dense 128 relu bn
    dense classes              # the classifier: `classes` follows the data (or the number itself)

Other lines: `bn` (batch norm), a bare activation (`relu`, `leaky_relu:0.1`, `maxout:2`), `gmp`
(global max pool). A maxout conv / dense layer emits pieces x its units and takes the max (Goodfellow 2013).
A YAML file holds either that list, or a mapping with `layers:` and optional `name`, `init`, `bias_init` and
`defaults` (`padding`, `activation` for conv / dense lines that do not say). A layer may also be a mapping:
`{type: conv, filters: 16, kernel: 3, padding: same, activation: relu, stride: 1, bn: true}`.

Mistakes raise CnnlabError naming the line and the problem. `create_model("model.yaml", ...)` and so
`cnnlab train --model model.yaml` / `cnnlab summary` use `build_from_file`; `register_spec_file` adds a file
to the model registry under a name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.models.base import ClassifierNet
from cnnlab.models.layers import (
    ACTIVATIONS,
    GlobalPool,
    Maxout,
    apply_init,
    make_activation,
    make_dropout,
    make_pool,
    split_arg,
)
from cnnlab.models.registry import MODELS

_KIND_ALIASES = {
    "conv2d": "conv",
    "convolution": "conv",
    "linear": "dense",
    "fc": "dense",
    "maxpooling2d": "maxpool",
    "max_pool": "maxpool",
    "avgpooling2d": "avgpool",
    "averagepool": "avgpool",
    "avg_pool": "avgpool",
    "min_pool": "minpool",
    "globalaveragepooling2d": "gap",
    "globalavgpool": "gap",
    "global_avg_pool": "gap",
    "globalmaxpool": "gmp",
    "globalmaxpooling2d": "gmp",
    "batchnorm": "bn",
    "batch_norm": "bn",
    "batchnormalization": "bn",
    "alpha_dropout": "alphadropout",
    "activation": "act",
}
KINDS = (
    "conv",
    "dense",
    "maxpool",
    "avgpool",
    "minpool",
    "gap",
    "gmp",
    "flatten",
    "dropout",
    "alphadropout",
    "bn",
    "act",
)
_ACT_NAMES = set(ACTIVATIONS) | {"leakyrelu", "lrelu", "linear", "none", "softmax", "log_softmax"}


@dataclass
class LayerSpec:
    """One parsed line: its kind, numbers, options, and where it came from (for error messages)."""

    kind: str
    numbers: list[str] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)
    line: int = 0
    text: str = ""

    def where(self) -> str:
        return f"line {self.line} (`{self.text}`)"


def _is_activation(token: str) -> bool:
    return split_arg(token, "activation")[0] in _ACT_NAMES


def _parse_text(text: str, line: int) -> LayerSpec:
    tokens = text.split()
    kind = _KIND_ALIASES.get(tokens[0].lower(), tokens[0].lower())
    if kind not in KINDS and _is_activation(tokens[0]):
        return LayerSpec("act", [], {"activation": tokens[0]}, line, text)
    spec = LayerSpec(kind, [], {}, line, text)
    if kind not in KINDS:
        raise CnnlabError(
            f"{spec.where()}: unknown layer '{tokens[0]}': use one of {', '.join(KINDS)} or an activation name"
        )
    for tok in tokens[1:]:
        low = tok.lower()
        if low in ("same", "valid"):
            spec.options["padding"] = low
        elif low in ("bn", "batchnorm"):
            spec.options["bn"] = True
        elif low == "nobias":
            spec.options["bias"] = False
        elif low.startswith("stride=") or (low[:1] == "s" and low[1:].isdigit()):
            spec.options["stride"] = low.split("=")[-1].lstrip("s")
        elif _is_activation(low):
            spec.options["activation"] = low
        elif low.replace(".", "", 1).isdigit() or low in ("classes", "num_classes"):
            spec.numbers.append(low)
        else:
            raise CnnlabError(
                f"{spec.where()}: cannot read '{tok}' (expected a number, same/valid, sN for a "
                f"stride, bn, nobias or an activation: {', '.join(ACTIVATIONS)}, e.g. leaky_relu:0.1)"
            )
    return spec


_DICT_NUMBERS = {
    "conv": ("filters", "kernel"),
    "dense": ("units",),
    "maxpool": ("size",),
    "avgpool": ("size",),
    "minpool": ("size",),
    "dropout": ("rate",),
    "alphadropout": ("rate",),
}
_DICT_SYNONYMS = {
    "kernel_size": "kernel",
    "pool_size": "size",
    "kernel": "kernel",
    "p": "rate",
    "strides": "stride",
    "batchnorm": "bn",
    "batch_norm": "bn",
    "use_bias": "bias",
    "out_channels": "filters",
    "out_features": "units",
}


def _parse_dict(item: dict, line: int) -> LayerSpec:
    text = ", ".join(f"{k}: {v}" for k, v in item.items())
    raw = {_DICT_SYNONYMS.get(str(k).lower(), str(k).lower()): v for k, v in item.items()}
    kind_raw = str(raw.pop("type", raw.pop("layer", "")))
    kind = _KIND_ALIASES.get(kind_raw.lower(), kind_raw.lower())
    spec = LayerSpec(kind, [], {}, line, "{" + text + "}")
    if kind not in KINDS:
        raise CnnlabError(f"{spec.where()}: unknown or missing layer type '{kind_raw}': use one of {', '.join(KINDS)}")
    for name in _DICT_NUMBERS.get(kind, ()):
        if name in raw:
            spec.numbers.append(str(raw.pop(name)))
    if kind == "act" and "activation" not in raw and "name" in raw:
        raw["activation"] = raw.pop("name")
    unknown = set(raw) - {"padding", "stride", "activation", "bn", "bias"}
    if unknown:
        raise CnnlabError(f"{spec.where()}: unknown option(s) {', '.join(sorted(unknown))} for a {kind} layer")
    spec.options.update(raw)
    return spec


def parse_spec(lines: str | list, line_numbers: list[int] | None = None) -> list[LayerSpec]:
    """Parse layer lines (a text with newlines or `;`, or a list of strings / mappings) into LayerSpecs."""
    if isinstance(lines, str):
        items, numbers = [], []
        for i, raw in enumerate(lines.splitlines(), 1):
            for part in raw.split("#", 1)[0].split(";"):
                if part.strip():
                    items.append(part.strip())
                    numbers.append(i)
        lines, line_numbers = items, numbers
    line_numbers = line_numbers or list(range(1, len(lines) + 1))
    specs = []
    for item, line in zip(lines, line_numbers):
        if isinstance(item, dict):
            specs.append(_parse_dict(item, line))
        elif isinstance(item, str) and item.split("#", 1)[0].strip():
            specs.append(_parse_text(item.split("#", 1)[0].strip(), line))
        elif not isinstance(item, str):
            raise CnnlabError(f"line {line}: a layer must be a line of text or a mapping, got {item!r}")
    if not specs:
        raise CnnlabError("the model spec has no layers")
    return specs


def _number(spec: LayerSpec, index: int, what: str, cast: type = int, default: Any = None) -> Any:
    if index >= len(spec.numbers):
        if default is not None:
            return default
        raise CnnlabError(f"{spec.where()}: missing the {what}")
    try:
        value = cast(float(spec.numbers[index])) if cast is int else cast(spec.numbers[index])
    except ValueError:
        raise CnnlabError(f"{spec.where()}: the {what} must be a number, got '{spec.numbers[index]}'") from None
    if value < 0 or (cast is int and value == 0):
        raise CnnlabError(f"{spec.where()}: the {what} must be positive, got {spec.numbers[index]}")
    return value


class SpecNet(ClassifierNet):
    """A model built from a layer spec: `features` up to the last flatten / global pool, `head` after it."""

    def __init__(
        self,
        features: nn.Sequential,
        head: nn.Sequential,
        num_classes: int,
        in_chans: int,
        input_size: tuple[int, int],
        name: str = "spec",
    ) -> None:
        super().__init__()
        self.features, self.head, self.num_classes, self.name = features, head, num_classes, name
        self.default_cfg = {
            "mean": (0.5,) * in_chans,
            "std": (0.5,) * in_chans,
            "input_size": (in_chans, *input_size),
        }


class _Builder:
    """Turns LayerSpecs into modules, checking each against the running output shape."""

    def __init__(
        self,
        num_classes: int,
        in_chans: int,
        input_size: tuple[int, int],
        defaults: dict,
        activation: str | None,
    ) -> None:
        self.num_classes, self.defaults, self.activation_override = num_classes, defaults, activation
        self.x = torch.zeros(1, in_chans, *input_size)
        self.modules: list[nn.Module] = []
        self.split = 0  # modules before this index are `features`

    def effective(self, name: str | None) -> str | None:
        """The activation a layer gets: its own, or the override when it has a non-linear one."""
        if name is None or not self.activation_override:
            return name
        return name if split_arg(name, "activation")[0] in ("linear", "none", "identity") else self.activation_override

    def act(self, spec: LayerSpec, name: str | None, channels: int | None = None) -> nn.Module | None:
        if name is None:
            return None
        if name.lower() in ("softmax", "log_softmax"):
            raise CnnlabError(f"{spec.where()}: leave out softmax: the loss applies it to the last layer's outputs")
        try:
            return make_activation(name, channels)
        except CnnlabError as e:
            raise CnnlabError(f"{spec.where()}: {e}") from None

    def stride(self, spec: LayerSpec, default: int) -> int:
        raw = spec.options.get("stride", default)
        try:
            value = int(float(raw))
        except (TypeError, ValueError):
            value = 0
        if value < 1:
            raise CnnlabError(f"{spec.where()}: the stride must be a positive whole number, got {raw}")
        return value

    def add(self, spec: LayerSpec, *mods: nn.Module | None) -> None:
        for m in mods:
            if m is None:
                continue
            try:
                with torch.no_grad():
                    self.x = m.eval()(self.x)
            except (RuntimeError, ValueError, CnnlabError) as e:
                shape = tuple(self.x.shape[1:])
                raise CnnlabError(
                    f"{spec.where()}: does not fit its input of shape {shape}: {str(e).splitlines()[0]}"
                ) from None
            self.modules.append(m.train())

    def build(self, spec: LayerSpec, last: bool) -> None:
        method = getattr(self, f"_{spec.kind}")
        method(spec, last)

    def _conv(self, spec: LayerSpec, last: bool) -> None:
        if self.x.dim() != 4:
            raise CnnlabError(f"{spec.where()}: conv needs an image input, but the layers before flattened it")
        filters, kernel = _number(spec, 0, "number of filters"), _number(spec, 1, "kernel size", default=3)
        stride = self.stride(spec, 1)
        padding = str(spec.options.get("padding", self.defaults.get("padding", "valid"))).lower()
        if padding not in ("same", "valid"):
            raise CnnlabError(f"{spec.where()}: padding must be same or valid, got {padding}")
        act_name = self.effective(spec.options.get("activation", self.defaults.get("activation")))
        pieces = self._maxout_pieces(act_name)
        pad: int | str = kernel // 2 if padding == "same" else 0
        if padding == "same" and stride == 1 and kernel % 2 == 0:
            pad = "same"
        conv = nn.Conv2d(self.x.shape[1], filters * pieces, kernel, stride, pad, bias=spec.options.get("bias", True))
        bn = nn.BatchNorm2d(filters * pieces) if spec.options.get("bn") else None
        act = Maxout(pieces) if pieces > 1 else self.act(spec, act_name, filters)
        self.add(spec, conv, bn, act)

    @staticmethod
    def _maxout_pieces(act_name: str | None) -> int:
        if act_name is None:
            return 1
        name, arg = split_arg(act_name, "activation")
        return int(arg or 2) if name == "maxout" else 1

    def _dense(self, spec: LayerSpec, last: bool) -> None:
        if self.x.dim() != 2:
            raise CnnlabError(f"{spec.where()}: dense needs a flat input: put `flatten` or `gap` before it")
        if self.split == 0:
            self.split = len(self.modules)
        raw = spec.numbers[0] if spec.numbers else ""
        units = self.num_classes if raw in ("classes", "num_classes") else _number(spec, 0, "number of units")
        act_name = spec.options.get("activation", None if last else self.defaults.get("activation"))
        if last:
            if units != self.num_classes:
                raise CnnlabError(
                    f"{spec.where()}: the last layer has {units} units but the data has "
                    f"{self.num_classes} classes: write `dense classes` to follow the data"
                )
            if act_name is not None and split_arg(act_name, "activation")[0] not in (
                "linear",
                "none",
                "identity",
            ):
                raise CnnlabError(
                    f"{spec.where()}: the last dense layer gives the logits: remove its activation "
                    f"'{act_name}' (the loss applies softmax)"
                )
            self.add(spec, nn.Linear(self.x.shape[1], units))
            return
        act_name = self.effective(act_name)
        pieces = self._maxout_pieces(act_name)
        lin = nn.Linear(self.x.shape[1], units * pieces, bias=spec.options.get("bias", True))
        bn = nn.BatchNorm1d(units * pieces) if spec.options.get("bn") else None
        act = Maxout(pieces) if pieces > 1 else self.act(spec, act_name, units)
        self.add(spec, lin, bn, act)

    def _pool(self, spec: LayerSpec, kind: str) -> None:
        if self.x.dim() != 4:
            raise CnnlabError(f"{spec.where()}: pooling needs an image input, but the layers before flattened it")
        size = _number(spec, 0, "pool size", default=2)
        stride = self.stride(spec, size)
        ceil = str(spec.options.get("padding", "valid")).lower() == "same"
        self.add(spec, make_pool(kind, size, stride, 0, ceil_mode=ceil))

    def _maxpool(self, spec: LayerSpec, last: bool) -> None:
        self._pool(spec, "max")

    def _avgpool(self, spec: LayerSpec, last: bool) -> None:
        self._pool(spec, "avg")

    def _minpool(self, spec: LayerSpec, last: bool) -> None:
        self._pool(spec, "min")

    def _flatten(self, spec: LayerSpec, last: bool) -> None:
        self.add(spec, nn.Flatten())

    def _gap(self, spec: LayerSpec, last: bool) -> None:
        self.add(spec, GlobalPool("avg"))

    def _gmp(self, spec: LayerSpec, last: bool) -> None:
        self.add(spec, GlobalPool("max"))

    def _dropout(self, spec: LayerSpec, last: bool, kind: str = "dropout") -> None:
        rate = _number(spec, 0, "dropout rate", cast=float, default=0.5)
        try:
            self.add(spec, make_dropout(rate, kind))
        except CnnlabError as e:
            raise CnnlabError(f"{spec.where()}: {e}") from None

    def _alphadropout(self, spec: LayerSpec, last: bool) -> None:
        self._dropout(spec, last, "alpha")

    def _bn(self, spec: LayerSpec, last: bool) -> None:
        c = self.x.shape[1]
        self.add(spec, nn.BatchNorm2d(c) if self.x.dim() == 4 else nn.BatchNorm1d(c))

    def _act(self, spec: LayerSpec, last: bool) -> None:
        name = spec.options.get("activation")
        if name is None:
            raise CnnlabError(f"{spec.where()}: name the activation, e.g. `relu`")
        if split_arg(name, "activation")[0] == "maxout":
            self.add(spec, Maxout(int(split_arg(name, "activation")[1] or 2)))
        else:
            self.add(spec, self.act(spec, self.effective(name), int(self.x.shape[1])))


def build_from_spec(
    lines: str | list,
    num_classes: int,
    in_chans: int = 3,
    input_size=(32, 32),
    init: str | float | None = None,
    bias_init: str | float | None = None,
    activation: str | None = None,
    defaults: dict | None = None,
    name: str = "spec",
    line_numbers: list[int] | None = None,
) -> SpecNet:
    """Build a model from layer lines (see the module docstring for the syntax).

    Args:
        lines: the layers: a text (newlines or `;` between layers) or a list of strings / mappings.
        num_classes, in_chans, input_size: the data's classes, channels and (H, W).
        init, bias_init: initializer for all conv / dense weights and biases (e.g. 'he_normal', 0.01).
        activation: replaces every activation named in the spec (try the same model with 'elu', say).
        defaults: `padding` and `activation` for conv / dense lines that do not give them.
        line_numbers: the source line of each entry of a list (for error messages).
    """
    specs = parse_spec(lines, line_numbers)
    builder = _Builder(num_classes, in_chans, tuple(input_size), dict(defaults or {}), activation)
    if activation:
        make_activation(activation, 1)
    for i, spec in enumerate(specs):
        builder.build(spec, last=i == len(specs) - 1)
    last = specs[-1]
    if not isinstance(builder.modules[-1], nn.Linear):
        raise CnnlabError(f"{last.where()}: a model must end with its classifier: add `dense classes` after it")
    features = nn.Sequential(*builder.modules[: builder.split])
    head = nn.Sequential(*builder.modules[builder.split :])
    model = SpecNet(features, head, num_classes, in_chans, tuple(input_size), name)
    if init is not None or bias_init is not None:
        apply_init(model, init, bias_init)
    return model


def _yaml_layers(text: str, path: Path) -> tuple[list, list[int], dict]:
    """Load a YAML spec: its layer list, each layer's line number, and the top-level options."""
    import yaml

    try:
        data = yaml.safe_load(text)
        root = yaml.compose(text)
    except yaml.YAMLError as e:
        raise CnnlabError(f"{path} is not valid YAML: {e}") from None
    options: dict = {}
    node = root
    if isinstance(data, dict):
        if "layers" not in data:
            raise CnnlabError(f"{path}: a YAML model needs a `layers:` list (or be a plain list of layers)")
        options = {k: v for k, v in data.items() if k != "layers"}
        unknown = set(options) - {"name", "init", "bias_init", "defaults", "input", "description"}
        if unknown:
            raise CnnlabError(
                f"{path}: unknown top-level key(s) {', '.join(sorted(unknown))}: use name, init, "
                "bias_init, defaults, layers"
            )
        node = next(v for k, v in root.value if k.value == "layers")
        data = data["layers"]
    if not isinstance(data, list):
        raise CnnlabError(f"{path}: the layers must be a YAML list, one layer per `- ` item")
    return data, [item.start_mark.line + 1 for item in node.value], options


def build_from_file(
    path: str | Path, num_classes: int, in_chans: int = 3, input_size=(32, 32), **kwargs: Any
) -> SpecNet:
    """Build a model from a .yaml/.yml spec or a .txt file of layer lines (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise CnnlabError(f"model spec file not found: {path}")
    text = path.read_text()
    if path.suffix.lower() in (".yaml", ".yml"):
        layers, numbers, options = _yaml_layers(text, path)
        options.pop("input", None), options.pop("description", None)
        options.setdefault("name", path.stem)
        merged = {**options, **kwargs}
        try:
            return build_from_spec(layers, num_classes, in_chans, input_size, line_numbers=numbers, **merged)
        except CnnlabError as e:
            raise CnnlabError(f"{path}: {e}") from None
    try:
        return build_from_spec(text, num_classes, in_chans, input_size, name=path.stem, **kwargs)
    except CnnlabError as e:
        raise CnnlabError(f"{path}: {e}") from None


def register_spec_file(path: str | Path, name: str | None = None) -> str:
    """Register a spec file as a named model (default name: the file's stem); returns the name."""
    path = Path(path).resolve()
    key = (name or path.stem).lower()

    def builder(num_classes: int, in_chans: int = 3, input_size=(32, 32), **kwargs: Any) -> SpecNet:
        return build_from_file(path, num_classes, in_chans, input_size, **kwargs)

    MODELS.register(key, doc=f"layer spec {path}")(builder)
    return key
