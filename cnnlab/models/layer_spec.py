"""The layer-spec language: a Keras-Sequential-style model written as lines of text or YAML, no code.

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

Mistakes raise CnnlabError naming the line and the problem. This module reads and checks specs; cnnlab.models.spec
builds them (`create_model("model.yaml", ...)`, `cnnlab train --model model.yaml`, `cnnlab summary`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cnnlab.errors import CnnlabError
from cnnlab.models.layers import ACTIVATIONS, split_arg

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


def spec_number(spec: LayerSpec, index: int, what: str, cast: type = int, default: Any = None) -> Any:
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


def yaml_layers(text: str, path: Path) -> tuple[list, list[int], dict]:
    """Load a YAML spec: its layer list, each layer's line number, and the top-level options."""
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



@dataclass
class SpecFile:
    """A layer-spec file, read and checked: its layers, their line numbers and the file's top-level options."""

    layers: str | list
    line_numbers: list[int] | None
    options: dict[str, Any]


def read_spec_file(path: str | Path) -> SpecFile:
    """Read a .yaml/.yml spec or a .txt file of layer lines and check that every layer parses."""
    path = Path(path)
    if not path.is_file():
        raise CnnlabError(f"model spec file not found: {path}")
    text = path.read_text()
    if path.suffix.lower() in (".yaml", ".yml"):
        layers, numbers, options = yaml_layers(text, path)
        options.pop("input", None), options.pop("description", None)
        options.setdefault("name", path.stem)
        spec = SpecFile(layers, numbers, options)
    else:
        spec = SpecFile(text, None, {"name": path.stem})
    try:
        parse_spec(spec.layers, spec.line_numbers)
    except CnnlabError as e:
        raise CnnlabError(f"{path}: {e}") from None
    return spec
