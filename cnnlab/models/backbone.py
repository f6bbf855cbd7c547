"""Multi-scale feature maps (a detector's FPN input) from the zoo's CNNs, layer-spec models and timm models.

Owns `create_backbone` (build a model by name and keep its feature maps), `feature_extractor` (the same for a model
already built, e.g. once `--weights` are loaded into the classifier) and `FeatureMaps`, the module they return for
cnnlab models; timm models get timm's own `features_only` net (or its `FeatureGetterNet` when already built).

Levels are read off the model, not listed per architecture: a model names the modules `forward_features` runs
(`trunk_modules()`, or its `features` Sequential), and a forward pass of zeros (eval mode, no gradient; at 32 px,
or larger until no map shrinks to one pixel) measures what each returns. A *level* is the last map at one
resolution: it ends before a module that reduces the size, and at the end of the trunk. A plain nn.Sequential is
opened where a reduction happens inside it (the pools of VGG / seed_cnn / a spec model, MobileNet's stage1); any
other block stays whole, so a ResNet block or a DenseNet transition that downsamples starts the next level. The
maps stop before the first flattened (2-D) output.

`feature_info` (timm's `FeatureInfo`) lists every level: `channels()`, `reduction()` (the nominal stride relative
to the input) and `module_name()` (the module of the model whose output the map is) give the selected ones.

Default `out_indices`: the deepest four levels, all of them when there are fewer. That is C2..C5 (strides 4..32)
for the ImageNet layouts (resnet, densenet121, mobilenet_v1, googlenet, vgg, alexnet) and for timm CNNs; their
small-input variants (stride-1 stems, at 64 px and below) give the same stages at strides 1..8 or 2..16; the CIFAR
ResNets, DenseNet-BC, seed_cnn and lenet5 have three levels, at strides 1, 2 and 4.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from timm.models import FeatureInfo
from torch import nn

from cnnlab.errors import CnnlabError

# sides of the measuring input, smallest first: the first the trunk takes and ends at 2 px or more is used (a block's
# stride is read from the sizes, so no map may shrink to a single pixel); then the model's own size if larger
PROBE_SIZES = (32, 64, 128, 256)
DEFAULT_LEVELS = 4  # out_indices=None: the deepest four levels (C2..C5 of the ImageNet layouts)

OutIndices = int | tuple[int, ...] | list[int] | None


class FeatureMaps(nn.ModuleDict):
    """The trunk of a model cut into levels: `forward(x)` returns the selected maps, shallow to deep.

    It holds the model's own modules (shared, not copied) up to the deepest selected level, keyed by their names
    in the model with the dots of an opened Sequential as underscores (timm's convention): `layer1`, `features_4`.
    `feature_info` (timm's FeatureInfo) gives `channels()`, `reduction()` and `module_name()` of the selection.
    """

    def __init__(self, units: list[tuple[str, nn.Module]], return_layers: list[str], feature_info: FeatureInfo):
        super().__init__(units)
        self.return_layers = list(return_layers)
        self.feature_info = feature_info

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out: list[torch.Tensor] = []
        for name, module in self.items():
            x = module(x)
            if name in self.return_layers:
                out.append(x)
        return out


@dataclass
class _Node:
    """One module of the trunk as the probe saw it: shapes in and out, and its children if a plain Sequential."""

    name: str
    module: nn.Module
    children: list[_Node]
    shape_in: tuple[int, ...]
    shape_out: tuple[int, ...]

    @property
    def is_map(self) -> bool:
        return len(self.shape_out) == 4

    @property
    def stride(self) -> int:
        """How much this module shrinks the map (1: same size): a conv's or pool's own stride, the product of a
        Sequential's, else the ratio of the sizes in and out (the larger axis, rounded)."""
        if not self.is_map:
            return 1
        if self.children:
            return math.prod(c.stride for c in self.children)
        if isinstance(self.module, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):  # exact even where unpadded
            stride = self.module.stride
            return int(max(stride) if isinstance(stride, tuple) else stride)
        ratios = [i / max(o, 1) for i, o in zip(self.shape_in[2:], self.shape_out[2:])]
        return max(1, round(max(ratios)))

    def must_open(self) -> bool:
        """A level boundary lies inside: a child after the first reduces, or flattens, or must open itself."""
        kids = self.children
        return any(c.stride > 1 for c in kids[1:]) or any(not c.is_map or c.must_open() for c in kids)


@dataclass
class _Unit:
    """A module the extractor runs whole: its name in the model, the name its output goes by, its measures."""

    name: str
    alias: str
    module: nn.Module
    stride: int
    channels: int
    is_map: bool
    side: tuple[int, ...]


def _probe(name: str, module: nn.Module, x: Any) -> tuple[_Node, Any]:
    children: list[_Node] = []
    if type(module) is nn.Sequential:  # plain Sequentials only: a subclass may run its children otherwise
        y = x
        for key, child in module.named_children():
            node, y = _probe(f"{name}.{key}", child, y)
            children.append(node)
    else:
        y = module(x)
    shape_out = tuple(y.shape) if isinstance(y, torch.Tensor) else ()
    return _Node(name, module, children, tuple(x.shape), shape_out), y


def _units(node: _Node, alias: str) -> list[_Unit]:
    """The node whole, or opened into its children; the last child's output is the node's, so it keeps the alias."""
    if not node.must_open():
        channels = node.shape_out[1] if node.is_map else 0
        return [_Unit(node.name, alias, node.module, node.stride, channels, node.is_map, node.shape_out[2:])]
    last = len(node.children) - 1
    return [u for i, c in enumerate(node.children) for u in _units(c, alias if i == last else c.name)]


def _first_conv_channels(trunk: list[tuple[str, nn.Module]]) -> int | None:
    for _, module in trunk:
        for m in module.modules():
            if isinstance(m, nn.Conv2d):
                return m.in_channels
    return None


def _measure(trunk: list[tuple[str, nn.Module]], x: torch.Tensor) -> list[_Unit]:
    units: list[_Unit] = []
    with torch.no_grad():
        for name, module in trunk:
            node, x = _probe(name, module, x)
            units += _units(node, name)
            if not node.is_map:
                break
    cut = next((i for i, u in enumerate(units) if not u.is_map), len(units))
    return units[:cut]


def _probe_trunk(model: nn.Module, trunk: list[tuple[str, nn.Module]], in_chans: int, label: str) -> list[_Unit]:
    """Run zeros through the trunk (eval mode, no gradient, every module's mode restored after) at the PROBE_SIZES
    in turn and cut it into units, up to the first flattened output; nn.Identity units are left out."""
    param = next(model.parameters(), torch.zeros(()))
    cfg_size = tuple((getattr(model, "default_cfg", None) or {}).get("input_size", (0, 0, 0))[1:])
    sizes = [(s, s) for s in PROBE_SIZES] + ([cfg_size] if cfg_size and min(cfg_size) > PROBE_SIZES[-1] else [])
    modes = {m: m.training for m in model.modules()}
    model.eval()
    units, error = None, ""
    try:
        for size in sizes:
            try:
                units = _measure(trunk, torch.zeros(1, in_chans, *size, dtype=param.dtype, device=param.device))
            except RuntimeError as e:  # too small for an unpadded layer
                error = str(e).splitlines()[0] if str(e) else type(e).__name__
                continue
            if not units or min(units[-1].side) >= 2:  # else try larger: a map of one pixel hides a block's stride
                break
    finally:
        for m, training in modes.items():
            m.training = training
    if units is None:
        raise CnnlabError(f"{label}: cannot measure its feature maps on inputs up to {sizes[-1]} px: {error}")
    return [u for u in units if not isinstance(u.module, nn.Identity)]


def _levels(units: list[_Unit]) -> tuple[list[dict[str, Any]], list[int]]:
    """The info dict of each level (timm's keys) and the position of its last unit."""
    info, ends, reduction = [], [], 1
    for i, unit in enumerate(units):
        reduction *= unit.stride
        if i == len(units) - 1 or units[i + 1].stride > 1:
            info.append({"num_chs": unit.channels, "reduction": reduction, "module": unit.alias})
            ends.append(i)
    return info, ends


def _resolve_out_indices(out_indices: OutIndices, info: list[dict[str, Any]], label: str) -> tuple[int, ...]:
    """Levels to return, as sorted non-negative indices into `info`.

    Args:
        out_indices: None (the deepest DEFAULT_LEVELS), an int n (the deepest n, timm's meaning), or indices
            (negative ones count from the deepest).
        info: every level's info dict (`num_chs`, `reduction`, `module`).
        label: what the levels belong to, for the error message.
    """
    n = len(info)
    if out_indices is None or (isinstance(out_indices, int) and not isinstance(out_indices, bool)):
        count = DEFAULT_LEVELS if out_indices is None else out_indices
        if count < 1:
            raise CnnlabError(f"out_indices={out_indices} asks for no feature map: give a count >= 1 or indices")
        return tuple(range(max(0, n - count), n))
    indices = list(out_indices)
    if not indices or any(not isinstance(i, int) or not -n <= i < n for i in indices):
        levels = ", ".join(f"{j}: {d['num_chs']}ch/{d['reduction']}" for j, d in enumerate(info))
        raise CnnlabError(f"out_indices {tuple(indices)} do not fit {label}, whose {n} levels are "
                          f"{levels} (channels/stride): pick indices in 0..{n - 1}")
    return tuple(sorted({i % n for i in indices}))


def _trunk(model: nn.Module, label: str) -> list[tuple[str, nn.Module]]:
    if hasattr(model, "trunk_modules"):
        return list(model.trunk_modules())
    features = getattr(model, "features", None)
    if isinstance(features, nn.Module):
        return [("features", features)]
    raise CnnlabError(f"{label}: cannot find its feature stages: feature_extractor takes a cnnlab zoo or layer-spec "
                      "model, a timm model, or a model whose `features` Sequential runs its convolutions")


def _no_maps(label: str) -> CnnlabError:
    return CnnlabError(f"{label} gives no feature maps: it flattens the image before any convolution; "
                       "a backbone needs a CNN such as seed_cnn, resnet18 or timm:<name>")


def _timm_getter(model: nn.Module, out_indices: OutIndices, label: str) -> nn.Module:
    """A timm classifier: timm's FeatureGetterNet over `forward_intermediates` (the model shared, not pruned)."""
    from timm.models._features import FeatureGetterNet  # timm.models does not re-export it

    if not hasattr(model, "forward_intermediates"):
        raise CnnlabError(f"{label} has no forward_intermediates: build it with create_backbone('timm:<name>') and "
                          "load the weights into that")
    indices = _resolve_out_indices(out_indices, model.feature_info, label)
    return FeatureGetterNet(model, out_indices=indices, prune=False)


def feature_extractor(model: nn.Module, out_indices: OutIndices = None) -> nn.Module:
    """The multi-scale feature maps of a model already built (its weights loaded), sharing its parameters.

    Args:
        model: a cnnlab model (zoo or layer spec), a timm model, or any model whose `features` Sequential holds
            its convolutions.
        out_indices: levels to return: None (the deepest four), n (the deepest n) or indices (see the module doc).

    Returns:
        A module whose `forward(x)` returns a list of maps, shallow to deep, and whose `feature_info` gives their
        `channels()`, `reduction()` and `module_name()`. It never runs the classifier head; for a cnnlab model it
        does not hold it either (a timm classifier is wrapped whole by timm's FeatureGetterNet).
    """
    return _extract(model, out_indices, type(model).__name__)


def _extract(model: nn.Module, out_indices: OutIndices, label: str) -> nn.Module:
    info = getattr(model, "feature_info", None)
    if isinstance(info, FeatureInfo):  # already a feature net (ours, or timm's features_only)
        if out_indices is None:
            return model
        raise CnnlabError(f"{label} is already a feature extractor: build it from the classifier (or create_backbone) "
                          f"with out_indices={out_indices}")
    if isinstance(info, list) and info and "reduction" in info[0]:  # a timm classifier
        return _timm_getter(model, out_indices, label)
    trunk = _trunk(model, label)
    in_chans = _first_conv_channels(trunk)
    units = _probe_trunk(model, trunk, in_chans, label) if in_chans else []
    if not units:
        raise _no_maps(label)
    levels, ends = _levels(units)
    indices = _resolve_out_indices(out_indices, levels, label)
    keys = [u.name.replace(".", "_") for u in units[: ends[indices[-1]] + 1]]
    return FeatureMaps(list(zip(keys, (u.module for u in units))), [keys[ends[i]] for i in indices],
                       FeatureInfo(levels, indices))


def create_backbone(name: str, in_chans: int = 3, input_size: tuple[int, int] = (224, 224),
                    out_indices: OutIndices = None, pretrained: bool = False, **model_kwargs: Any) -> nn.Module:
    """Build a model by name and return its multi-scale feature maps (timm's `features_only=True`).

    Args:
        name: a registered model (`cnnlab models`), `timm:<name>`, or a layer-spec file.
        in_chans: input channels.
        input_size: (H, W) the model is built for (it picks the small-input stems at <= 64 px); the maps work at
            any size the model takes.
        out_indices: levels to return: None (the deepest four), n (the deepest n) or indices (see the module doc).
        pretrained: pretrained weights (timm models).
        **model_kwargs: passed to the builder (width=, activation=, ...); num_classes (default 1000) sizes the
            head that is built and dropped, so the same seed gives the trunk of create_model(name, num_classes).

    Returns:
        The feature extractor (see `feature_extractor`); for timm models timm's own features_only net.
    """
    from cnnlab.models.registry import create_model

    num_classes = model_kwargs.pop("num_classes", 1000)
    if not name.startswith("timm:"):
        model = create_model(name, num_classes, in_chans, tuple(input_size), pretrained, **model_kwargs)
        return _extract(model, out_indices, f"model '{name}'")
    wanted = DEFAULT_LEVELS if out_indices is None else out_indices
    try:
        model = create_model(name, num_classes, in_chans, tuple(input_size), pretrained, features_only=True,
                             out_indices=wanted if isinstance(wanted, int) else tuple(wanted), **model_kwargs)
    except IndexError:
        raise CnnlabError(f"out_indices {wanted} do not fit model '{name}': its levels are listed by "
                          f"timm.create_model('{name[5:]}').feature_info") from None
    info = model.feature_info
    info.out_indices = tuple(i % len(info) for i in info.out_indices)  # timm keeps -4..-1 for "the last four"
    return model


__all__ = ["DEFAULT_LEVELS", "FeatureMaps", "create_backbone", "feature_extractor"]
