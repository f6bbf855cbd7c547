"""Exact graph rewrites that make training faster without changing what the model computes.

pool_before_activation: ``activation -> MaxPool2d`` becomes ``MaxPool2d -> activation`` when the activation is
elementwise and monotone non-decreasing (ReLU, LeakyReLU with a non-negative slope, ELU, SELU, ...). Max-pooling
commutes with such a function, max(f(a), f(b)) = f(max(a, b)), and so does it after rounding to bf16 (rounding is
monotone too), so the outputs are bit-identical and the gradients reach the same inputs. The activation (and its
backward) then runs on a quarter of the elements: on the seed CNN that is two of its four largest elementwise ops,
about 10% of a training step on the CPU (benchmarks/results/speed_*.md).

Both modules are parameter-free and keep their places in the Sequential's numbering, so state dicts are unchanged
and checkpoints load into the model as defined. `summary` is taken before the rewrite, so the run folder shows the
architecture as written; `run.model` itself holds the swapped order (a forward hook on `features[3]` of seed_cnn
sees the pool, not the ReLU).
"""

from __future__ import annotations

from torch import nn

# Elementwise activations that are monotone non-decreasing for every setting of their (non-learned) options.
_MONOTONE = (nn.ReLU, nn.ReLU6, nn.SELU, nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Hardsigmoid, nn.Softplus, nn.Softsign,
             nn.Identity)


def is_monotone_activation(module: nn.Module) -> bool:
    """True when ``module`` applies a fixed, elementwise, non-decreasing function (so it commutes with max)."""
    if type(module) is nn.LeakyReLU:
        return module.negative_slope >= 0
    if type(module) is nn.ELU or type(module) is nn.CELU:
        return module.alpha >= 0
    return type(module) in _MONOTONE


def _swap_adjacent(model: nn.Module, pool_first: bool) -> int:
    """Swap every adjacent (monotone activation, MaxPool2d) pair inside an nn.Sequential, the pool first or
    second as asked; returns the count."""
    swaps = 0
    for seq in model.modules():
        if not isinstance(seq, nn.Sequential):
            continue
        keys = list(seq._modules)
        for a, b in zip(keys, keys[1:]):
            pool, act = (seq._modules[a], seq._modules[b]) if pool_first else (seq._modules[b], seq._modules[a])
            if (isinstance(pool, nn.MaxPool2d) and not pool.return_indices and act is not None
                    and is_monotone_activation(act)):
                seq._modules[a], seq._modules[b] = seq._modules[b], seq._modules[a]
                swaps += 1
    return swaps


def pool_before_activation(model: nn.Module) -> int:
    """activation -> MaxPool2d becomes MaxPool2d -> activation (see the module doc); returns the swaps."""
    return _swap_adjacent(model, pool_first=False)


def as_written(model: nn.Module) -> int:
    """The inverse, exact too: MaxPool2d -> activation becomes activation -> pool, so feature maps (the report's)
    are seen after their activation as the model was written. Returns the swaps."""
    return _swap_adjacent(model, pool_first=True)


__all__ = ["as_written", "is_monotone_activation", "pool_before_activation"]
