"""Layer groups (from a model's timm-style `group_matcher()`), freezing, batch-norm policy, discriminative LRs.

Layer groups come from the model's `group_matcher()` (stem / blocks / head regexes), never from names hard-coded
here; the classifier always ends the list.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.models.weights import classifier_prefix
from cnnlab.train.callbacks import Callback


def layer_groups(model: nn.Module) -> list[list[str]]:
    """Parameter names per layer group, input to output (stem, blocks..., head), from `model.group_matcher()`."""
    matcher = getattr(model, "group_matcher", None)
    if matcher is None:
        raise CnnlabError(f"{type(model).__name__} has no group_matcher(), so its layer groups are unknown: use "
                          "--strategy feature-extract, or add group_matcher() to the model")
    try:
        spec = matcher(coarse=False)
    except NotImplementedError:
        raise CnnlabError(f"{type(model).__name__} does not describe its layer groups (group_matcher)") from None
    from timm.models import group_parameters

    grouped = group_parameters(model, spec)
    groups = [list(grouped[k]) for k in sorted(grouped)]
    head = classifier_param_names(model)
    if head:  # the classifier always ends the list, whatever the matcher says about it
        groups = [[n for n in g if n not in head] for g in groups]
        groups = [g for g in groups if g] + [sorted(head)]
    return groups


def classifier_param_names(model: nn.Module) -> set[str]:
    prefix = classifier_prefix(model)
    return {n for n, _ in model.named_parameters() if prefix and n.startswith(prefix + ".")}


def _keep_eval(module: nn.Module, args: tuple) -> None:
    module.training = False  # a frozen batch norm normalises with, and never updates, its running statistics


def freeze_batchnorm(modules: list[nn.Module]) -> list[Any]:
    """Keep these batch-norm layers in eval mode even inside model.train(); returns the hook handles."""
    return [m.register_forward_pre_hook(_keep_eval) for m in modules]


def batchnorm_layers(model: nn.Module, names: set[str] | None = None) -> list[nn.Module]:
    """Batch-norm modules of `model` (only those whose parameters are all in `names`, when given)."""
    out = []
    for mod_name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            params = [f"{mod_name}.{p}" for p, _ in m.named_parameters(recurse=False)]
            if names is None or (params and all(p in names for p in params)):
                out.append(m)
    return out


def set_trainable(model: nn.Module, names: set[str]) -> None:
    for n, p in model.named_parameters():
        p.requires_grad_(n in names)


def discriminative_param_groups(model: nn.Module, groups: list[list[str]], n_train: int, lr: float,
                                decay: float) -> list[dict[str, Any]]:
    """Optimizer groups for the last `n_train` layer groups: lr * decay ** (distance from the head)."""
    params = dict(model.named_parameters())
    out = []
    for depth, names in enumerate(reversed(groups[len(groups) - n_train:])):
        out.append({"params": [params[n] for n in names], "lr": lr * decay**depth, "name": f"group{depth}"})
    return out


class GradualUnfreeze(Callback):
    """Head first, then one deeper layer group per epoch (ULMFiT's gradual unfreezing)."""

    def __init__(self, model: nn.Module, groups_from_head: list[list[str]], bn_hooks: dict[int, list[Any]]):
        self.model, self.groups, self.bn_hooks = model, groups_from_head, bn_hooks

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any]) -> None:
        k = min(len(self.groups), epoch + 1)
        names = {n for g in self.groups[:k] for n in g}
        set_trainable(self.model, names)
        for depth in range(k):
            for handle in self.bn_hooks.pop(depth, []):
                handle.remove()
        if epoch > 0 and epoch < len(self.groups):
            self.trainer.log(f"GradualUnfreeze: {k} of {len(self.groups)} layer groups trainable")

