"""pool_before_activation: a training-speed rewrite that must not change what the model computes."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from cnnlab.models import create_model
from cnnlab.models.rewrite import is_monotone_activation, pool_before_activation

pytestmark = pytest.mark.usefixtures("one_thread")


def _outputs_and_grads(model: nn.Module, x: torch.Tensor, bf16: bool):
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = model(x)
    out.float().square().sum().backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("bf16", [False, True])
@pytest.mark.parametrize("name,kwargs,swaps", [
    ("seed_cnn", {}, 2),
    ("vgg11", {"activation": "leaky_relu:0.1"}, 4),  # 64 px: the small-input variant drops the last pool
    ("alexnet", {}, 3),
])
def test_swapped_model_gives_identical_outputs_and_gradients(name, kwargs, swaps, bf16):
    torch.manual_seed(0)
    size = 28 if name == "seed_cnn" else 64
    chans = 1 if name == "seed_cnn" else 3
    model = create_model(name, 10, in_chans=chans, input_size=(size, size), **kwargs)
    model.eval()  # dropout off: the comparison is deterministic
    fast = copy.deepcopy(model)
    assert pool_before_activation(fast) == swaps
    assert list(fast.state_dict()) == list(model.state_dict())
    x = torch.randn(4, chans, size, size)
    out, grads = _outputs_and_grads(model, x, bf16)
    out2, grads2 = _outputs_and_grads(fast, x, bf16)
    assert torch.equal(out, out2)
    for n in grads:  # fp32: bit-identical; bf16: within a couple of bf16 ulps (backward kernels round differently)
        tol = {"rtol": 0, "atol": 0} if not bf16 else {"rtol": 0, "atol": 0.02 * float(grads[n].abs().max())}
        torch.testing.assert_close(grads2[n], grads[n], **tol, msg=n)


def test_only_monotone_activations_before_max_pooling_move():
    assert is_monotone_activation(nn.ReLU()) and is_monotone_activation(nn.LeakyReLU(0.1))
    assert is_monotone_activation(nn.SELU()) and is_monotone_activation(nn.Tanh())
    assert not is_monotone_activation(nn.GELU()) and not is_monotone_activation(nn.SiLU())
    assert not is_monotone_activation(nn.LeakyReLU(-0.5)) and not is_monotone_activation(nn.PReLU())
    seq = nn.Sequential(nn.Conv2d(1, 4, 3), nn.GELU(), nn.MaxPool2d(2), nn.ReLU(), nn.AvgPool2d(2),
                        nn.ReLU(), nn.MaxPool2d(2, return_indices=True))
    before = [type(m) for m in seq]
    assert pool_before_activation(seq) == 0
    assert [type(m) for m in seq] == before
    seq = nn.Sequential(nn.Conv2d(1, 4, 3), nn.LeakyReLU(0.1), nn.MaxPool2d(3, 2, padding=1))
    assert pool_before_activation(seq) == 1
    assert [type(m) for m in seq] == [nn.Conv2d, nn.MaxPool2d, nn.LeakyReLU]
