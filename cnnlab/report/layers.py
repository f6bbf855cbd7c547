"""Which layers a report shows: the Grad-CAM target layer, the end of each convolutional stage, the first layer.

One forward pass with a hook on every module records each call: its name, its parent call, its output's shape and
identity. From that, with no table of model names:

- the **target layer** for Grad-CAM is the module whose output is the last (C, H, W) feature map with H * W > 1
  that the forward pass computes before any token sequence (after it come global pooling and the classifier;
  adaptive pooling, which only resizes, is passed over). Among modules returning that same tensor (a block, its
  last layer, an in-place activation) the outermost is named: `layer4` for ResNets, `features` for VGG and the seed
  CNN, `stage3` for MobileNetV1, `bn2` for timm's EfficientNets. This is the layer of the Grad-CAM paper (the last
  convolutional layer), the one pytorch-grad-cam's documentation asks users to pick by hand. When strided layers
  make the last maps 1x1 at the run's input size, the last map with spatial extent is used, and the note says so;
- the **stages** are read off the model's own nesting: starting from the top-level modules, a module is opened up
  while its calls span three or more spatial sizes (so `features` of a VGG is opened, a ResNet `layer2`, which
  downsamples once, is not); the last module at each spatial size is a stage end (ResNet: `layer1`..`layer4`,
  as timm's `feature_info` names them);
- the **first layer** is the first Conv2d the input reaches (with no convolution, the first Linear).

A model without a convolutional feature map (an MLP), or one whose map becomes a token sequence (a vision
transformer), has no target: `why_none` says why.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

_RESIZERS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Upsample)


@dataclass
class Call:
    """One call of a module in the traced forward pass."""

    name: str
    kind: str
    shape: tuple[int, ...]  # the output's shape without the batch dimension; () when it is not a tensor
    occurrence: int  # 0 for a module's first call, 1 for its second, ...
    parent: int | None  # index of the enclosing call
    tensor: int = 0  # identity of the output tensor (calls returning the same tensor share it)
    resizer: bool = False

    @property
    def is_map(self) -> bool:
        return len(self.shape) == 3 and self.shape[1] * self.shape[2] > 1

    @property
    def is_tokens(self) -> bool:
        return len(self.shape) == 2 and self.shape[0] > 1


@dataclass
class ModelTrace:
    calls: list[Call] = field(default_factory=list)  # in the order the calls finished
    first_layer: str | None = None
    target: Call | None = None
    note: str = ""  # why there is no target, or why the target is not the very last map
    stages: list[Call] = field(default_factory=list)

    def describe_target(self) -> str:
        if self.target is None:
            return self.note
        c, h, w = self.target.shape
        text = f"{self.target.name} ({self.target.kind}, output {c}x{h}x{w})"
        return f"{text}; {self.note}" if self.note else text


def trace_model(model: nn.Module, x: torch.Tensor) -> ModelTrace:
    """Trace one forward pass of `model` on the preprocessed batch `x` (the first image is enough)."""
    calls: list[Call] = []
    stack: list[int] = []
    seen: dict[str, int] = {}
    tensors: list[torch.Tensor] = []  # kept alive so that ids stay unique during the pass
    firsts: list[tuple[str, nn.Module]] = []

    def pre(name: str):
        def fn(module: nn.Module, inputs) -> None:
            calls.append(Call(name, type(module).__name__, (), seen.get(name, 0), stack[-1] if stack else None,
                              resizer=isinstance(module, _RESIZERS)))
            seen[name] = seen.get(name, 0) + 1
            stack.append(len(calls) - 1)
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                firsts.append((name, module))
        return fn

    def post(module: nn.Module, inputs, output) -> None:
        call = calls[stack.pop()]
        if isinstance(output, torch.Tensor):
            call.shape, call.tensor = tuple(output.shape[1:]), id(output)
            tensors.append(output)

    handles = []
    for name, module in model.named_modules():
        if name:
            handles += [module.register_forward_pre_hook(pre(name)), module.register_forward_hook(post)]
    model.eval()
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    trace = ModelTrace(calls=calls)
    convs = [n for n, m in firsts if isinstance(m, nn.Conv2d)]
    trace.first_layer = convs[0] if convs else (firsts[0][0] if firsts else None)
    end_order = _end_order(calls)
    _pick_target(trace, end_order, has_conv=bool(convs))
    trace.stages = _stages(trace, end_order)
    return trace


def _end_order(calls: list[Call]) -> list[int]:
    """Call indices in the order the calls finished (a parent finishes after its children)."""
    children: dict[int | None, list[int]] = {}
    for i, c in enumerate(calls):
        children.setdefault(c.parent, []).append(i)
    out: list[int] = []

    def visit(i: int) -> None:
        for j in children.get(i, []):
            visit(j)
        out.append(i)

    for i in children.get(None, []):
        visit(i)
    return out


def _pick_target(trace: ModelTrace, order: list[int], has_conv: bool) -> None:
    calls = trace.calls
    first_tokens = next((k for k, i in enumerate(order) if calls[i].is_tokens), len(order))
    maps = [i for i in order[:first_tokens] if calls[i].is_map and not calls[i].resizer]
    if not has_conv or not maps:
        trace.note = "the model has no convolutional feature map (an MLP): Grad-CAM has nothing to show"
        return
    if first_tokens < len(order):
        tokens = calls[order[first_tokens]]
        trace.note = (f"after {calls[maps[-1]].name} the model works on a token sequence ({tokens.name} "
                      f"{tuple(tokens.shape)}), not on a feature map: Grad-CAM is for CNNs")
        return
    last = calls[maps[-1]]
    same = [c for c in calls if c.tensor == last.tensor]
    trace.target = min(same, key=lambda c: (c.name.count("."), c.kind == "Identity", -calls.index(c)))
    after = [calls[i] for i in order[order.index(maps[-1]) + 1:] if len(calls[i].shape) == 3]
    if after and "pool" not in after[0].kind.lower():  # a 1x1 map made by a strided layer, not global pooling
        c, h, w = after[0].shape
        trace.note = (f"the maps after it are 1x1 at this input size (from {after[0].name}, {c}x{h}x{w}), so the "
                      "last map with spatial extent is used")


def _stages(trace: ModelTrace, order: list[int]) -> list[Call]:
    calls = trace.calls
    children: dict[int | None, list[int]] = {}
    for i, c in enumerate(calls):
        children.setdefault(c.parent, []).append(i)
    sizes: dict[int, set] = {}
    for i in order:  # children finish first, so their sizes are known
        own = {calls[i].shape[1:]} if calls[i].is_map else set()
        sizes[i] = own.union(*(sizes[j] for j in children.get(i, [])))
    spine = children.get(None, [])
    while any(len(sizes[i]) >= 3 and children.get(i) for i in spine):
        spine = [j for i in spine for j in (children[i] if len(sizes[i]) >= 3 and children.get(i) else [i])]
    end = order.index(calls.index(trace.target)) if trace.target is not None else len(order)
    rank = {i: k for k, i in enumerate(order)}
    stages: list[Call] = []
    for i in sorted(spine, key=rank.__getitem__):
        c = calls[i]
        if not c.is_map or c.resizer or rank[i] > end:
            continue
        if stages and stages[-1].shape[1:] == c.shape[1:]:
            stages[-1] = c
        else:
            stages.append(c)
    if trace.target is not None and stages and stages[-1].tensor == trace.target.tensor:
        stages[-1] = trace.target
    return stages
