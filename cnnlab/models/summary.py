"""Keras-style model summaries: one row per layer with output shape, parameter count and its formula.

Shapes are shown channels-last, (H, W, C), as Keras and the course notes write them; activation-only
modules are folded into the layer before them (Keras's Conv2D(activation="relu") is one row).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

# Modules that are an activation: they get no row of their own.
_ACTIVATIONS = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.GELU, nn.Sigmoid, nn.Tanh, nn.SiLU, nn.Mish,
    nn.Hardswish, nn.Hardsigmoid, nn.PReLU, nn.Softmax, nn.LogSoftmax, nn.Identity,
)


@dataclass
class LayerRow:
    name: str
    kind: str
    output_shape: tuple[int, ...]
    params: int
    trainable: int
    formula: str = ""


@dataclass
class ModelSummary:
    rows: list[LayerRow] = field(default_factory=list)
    total: int = 0
    trainable: int = 0
    input_size: tuple[int, ...] = ()

    @property
    def non_trainable(self) -> int:
        return self.total - self.trainable

    def __str__(self) -> str:
        return format_summary(self)


def _own_params(module: nn.Module) -> tuple[int, int]:
    params = list(module.parameters(recurse=False))
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def parameter_formula(module: nn.Module) -> str:
    """The arithmetic behind a conv / dense / batch-norm layer's count, e.g. '3*3*16*32 + 32 = 4640'."""
    total = sum(p.numel() for p in module.parameters(recurse=False))
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        cin = module.in_channels // module.groups
        text = f"{kh}*{kw}*{cin}*{module.out_channels}"
        if module.bias is not None:
            text += f" + {module.out_channels}"
        return f"{text} = {total}"
    if isinstance(module, nn.Linear):
        text = f"{module.in_features}*{module.out_features}"
        if module.bias is not None:
            text += f" + {module.out_features}"
        return f"{text} = {total}"
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.affine:
        return f"2*{module.num_features} (+{2 * module.num_features} running stats) = {total}"
    return ""


def _is_row_module(module: nn.Module) -> bool:
    """A row is shown for each leaf module that is not a bare activation, and for modules owning parameters."""
    if isinstance(module, _ACTIVATIONS):
        return False
    is_leaf = next(module.children(), None) is None
    return is_leaf or any(True for _ in module.parameters(recurse=False))


def _channels_last(shape: torch.Size) -> tuple[int, ...]:
    dims = tuple(shape[1:])  # drop the batch dimension
    if len(dims) == 3:  # (C, H, W) -> (H, W, C)
        return (dims[1], dims[2], dims[0])
    return dims


def summarize(model: nn.Module, input_size: tuple[int, ...], device: str | torch.device = "cpu") -> ModelSummary:
    """Run one forward pass on zeros of `input_size` (C, H, W) and collect a row per layer."""
    rows: list[LayerRow] = []
    hooks = []

    def make_hook(name: str):
        def hook(module: nn.Module, inputs, output) -> None:
            out = output[0] if isinstance(output, (tuple, list)) else output
            if not isinstance(out, torch.Tensor):
                return
            params, trainable = _own_params(module)
            rows.append(LayerRow(name, type(module).__name__, _channels_last(out.shape), params, trainable,
                                 parameter_formula(module)))

        return hook

    for name, module in model.named_modules():
        if name and _is_row_module(module):
            hooks.append(module.register_forward_hook(make_hook(name)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_size, device=device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return ModelSummary(rows, total, trainable, tuple(input_size))


def format_summary(summary: ModelSummary, title: str = "") -> str:
    """Render as a fixed-width text table (what `cnnlab summary` prints and runs save as summary.txt)."""
    header = ("Layer (type)", "Output shape (H, W, C)", "Param #", "Formula")
    table = [(f"{r.name} ({r.kind})", str(r.output_shape), f"{r.params:,}", r.formula) for r in summary.rows]
    widths = [max(len(header[i]), *(len(row[i]) for row in table)) if table else len(header[i]) for i in range(4)]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths))
    rule = "=" * len(line)
    out = [title] if title else []
    out += [rule, line, rule]
    out += ["  ".join(c.ljust(w) if i != 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
            for row in table]
    out += [rule,
            f"Total params: {summary.total:,}",
            f"Trainable params: {summary.trainable:,}",
            f"Non-trainable params: {summary.non_trainable:,}",
            rule]
    return "\n".join(out)


def summary(model: nn.Module, input_size: tuple[int, ...], print_fn=print) -> ModelSummary:
    """Print a Keras-style summary of `model` for an input of `input_size` (C, H, W) and return it."""
    result = summarize(model, input_size)
    if print_fn is not None:
        print_fn(format_summary(result))
    return result
