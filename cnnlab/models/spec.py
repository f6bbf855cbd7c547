"""The layer-spec builder: a model from lines of text or YAML (the language: cnnlab.models.layer_spec).

`build_from_spec` builds from layer lines, `build_from_file` from a .yaml / .txt file (`create_model("model.yaml",
...)`, `cnnlab train --model model.yaml`, `cnnlab summary`); `register_spec_file` adds a file to the model registry
under a name. Each layer is checked against the running output shape; mistakes name the line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.models.base import ClassifierNet
from cnnlab.models.layer_spec import LayerSpec, parse_spec, read_spec_file, spec_number
from cnnlab.models.layers import (
    GlobalPool,
    Maxout,
    apply_init,
    make_activation,
    make_dropout,
    make_pool,
    split_arg,
)
from cnnlab.models.registry import MODELS


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
        filters, kernel = spec_number(spec, 0, "number of filters"), spec_number(spec, 1, "kernel size", default=3)
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
        units = self.num_classes if raw in ("classes", "num_classes") else spec_number(spec, 0, "number of units")
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
        size = spec_number(spec, 0, "pool size", default=2)
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
        rate = spec_number(spec, 0, "dropout rate", cast=float, default=0.5)
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


def build_from_file(
    path: str | Path, num_classes: int, in_chans: int = 3, input_size=(32, 32), **kwargs: Any
) -> SpecNet:
    """Build a model from a .yaml/.yml spec or a .txt file of layer lines (see the module docstring)."""
    spec = read_spec_file(path)
    try:
        return build_from_spec(spec.layers, num_classes, in_chans, input_size, line_numbers=spec.line_numbers,
                               **{**spec.options, **kwargs})
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
