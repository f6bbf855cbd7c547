"""Each activation, initializer and pooling does what its name says."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.models.layers import (
    GlobalPool,
    Maxout,
    MinPool2d,
    apply_init,
    init_tensor,
    make_activation,
    make_dropout,
    make_norm,
    make_pool,
    weight_decay_groups,
)

X = torch.linspace(-3, 3, 61)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: small tensors run fastest on one thread


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("sigmoid", torch.sigmoid(X)),
        ("tanh", torch.tanh(X)),
        ("relu", X.clamp(min=0)),
        ("leaky_relu", torch.where(X > 0, X, 0.01 * X)),
        ("leaky_relu:0.1", torch.where(X > 0, X, 0.1 * X)),
        ("elu", torch.where(X > 0, X, torch.expm1(X))),
        ("selu", F.selu(X)),
        ("gelu", F.gelu(X)),
        ("linear", X),
    ],
)
def test_activations_compute_their_formula(name, expected):
    assert torch.allclose(make_activation(name)(X.clone()), expected, atol=1e-6)


def test_selu_constants():
    selu = make_activation("selu")
    assert selu(torch.tensor([1.0])).item() == pytest.approx(1.0507, abs=1e-4)
    assert selu(torch.tensor([-100.0])).item() == pytest.approx(-1.0507 * 1.67326, abs=1e-3)


def test_maxout_picks_the_max_of_each_group():
    x = torch.tensor([[1.0, 5.0, -2.0, -7.0, 3.0, 3.5]])
    assert torch.equal(Maxout(2)(x), torch.tensor([[5.0, -2.0, 3.5]]))
    assert torch.equal(Maxout(3)(x), torch.tensor([[5.0, 3.5]]))
    img = torch.randn(2, 8, 4, 4)
    assert torch.equal(Maxout(4)(img), img.view(2, 2, 4, 4, 4).amax(2))
    with pytest.raises(CnnlabError, match="divisible"):
        Maxout(4)(torch.randn(1, 6))


def test_drop_in_maxout_starts_as_relu_and_learns_pieces():
    act = make_activation("maxout", channels=3)
    x = torch.randn(4, 3, 5, 5)
    assert torch.equal(act(x), x.clamp(min=0))  # pieces x and 0
    with torch.no_grad():
        act.scale[1] = -1.0  # pieces x and -x: |x|
    assert torch.allclose(act(x), x.abs())
    assert sum(p.numel() for p in act.parameters()) == 2 * 2 * 3


def test_unknown_activation_lists_choices():
    with pytest.raises(CnnlabError, match="choose one of sigmoid, tanh, relu"):
        make_activation("swish")
    with pytest.raises(CnnlabError, match="number"):
        make_activation("leaky_relu:abc")


def test_zeros_normal_constant_bias():
    lin = nn.Linear(400, 500)
    apply_init(lin, "zeros", 0.01)
    assert (lin.weight == 0).all() and (lin.bias == 0.01).all()
    torch.manual_seed(0)
    apply_init(lin, "normal", "zeros")
    assert lin.weight.std().item() == pytest.approx(0.01, rel=0.02) and (lin.bias == 0).all()
    apply_init(lin, "normal:0.05", None)
    assert lin.weight.std().item() == pytest.approx(0.05, rel=0.02)


@pytest.mark.parametrize(
    ("name", "std"),
    [
        ("xavier_normal", math.sqrt(2 / (400 + 500))),
        ("glorot_normal", math.sqrt(2 / (400 + 500))),
        ("xavier_uniform", math.sqrt(2 / (400 + 500))),
        ("glorot_uniform", math.sqrt(2 / (400 + 500))),
        ("he_normal", math.sqrt(2 / 400)),
        ("kaiming_normal", math.sqrt(2 / 400)),
        ("he_uniform", math.sqrt(2 / 400)),
        ("kaiming_uniform", math.sqrt(2 / 400)),
        ("lecun_normal", 1 / math.sqrt(400)),
    ],
)
def test_scaled_initializers_have_their_std(name, std):
    torch.manual_seed(0)
    w = torch.empty(500, 400)  # fan_out 500, fan_in 400
    init_tensor(w, name)
    assert w.std().item() == pytest.approx(std, rel=0.03)
    assert abs(w.mean().item()) < std * 0.02
    if "uniform" in name:
        bound = std * math.sqrt(3)
        assert w.abs().max().item() <= bound and w.abs().max().item() > 0.99 * bound
    else:
        assert w.abs().max().item() > std * math.sqrt(3)  # a normal, not a uniform


def test_conv_fan_in_counts_the_kernel():
    conv = nn.Conv2d(16, 64, 3)
    torch.manual_seed(0)
    apply_init(conv, "lecun_normal")
    assert conv.weight.std().item() == pytest.approx(1 / math.sqrt(16 * 9), rel=0.05)


def test_apply_init_validates_before_touching_and_keeps_default():
    lin = nn.Linear(3, 3)
    before = lin.weight.detach().clone()
    with pytest.raises(CnnlabError, match="choose one of zeros, normal"):
        apply_init(lin, "orthogonal")
    apply_init(lin, "default", None)
    assert torch.equal(lin.weight, before)


def test_min_pool_is_minus_max_pool_of_minus_x():
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(MinPool2d(2)(x), -F.max_pool2d(-x, 2))
    assert torch.equal(make_pool("min", 3, 2, 1)(x), -F.max_pool2d(-x, 3, 2, 1))
    assert torch.equal(make_pool("max", 2)(x), F.max_pool2d(x, 2))
    assert torch.allclose(make_pool("avg", 2)(x), F.avg_pool2d(x, 2))
    assert torch.allclose(GlobalPool("avg")(x), x.mean((2, 3)))
    assert torch.equal(GlobalPool("min")(x), x.amin((2, 3)))
    with pytest.raises(CnnlabError, match="max, avg, min"):
        make_pool("median")


def test_norm_and_dropout_factories():
    assert isinstance(make_norm("batch", 4), nn.BatchNorm2d) and isinstance(make_norm("bn", 4, dims=1), nn.BatchNorm1d)
    assert isinstance(make_norm("none", 4), nn.Identity)
    assert isinstance(make_dropout(0.2), nn.Dropout) and isinstance(make_dropout(0.1, "alpha"), nn.AlphaDropout)
    assert isinstance(make_dropout(0.0), nn.Identity)
    with pytest.raises(CnnlabError):
        make_dropout(1.5)
    with pytest.raises(CnnlabError, match="batch, none"):
        make_norm("group", 4)


def test_same_and_valid_padding_and_strides():
    x = torch.randn(1, 1, 28, 28)
    assert nn.Conv2d(1, 1, 3, padding="same")(x).shape[-1] == 28
    assert nn.Conv2d(1, 1, 3)(x).shape[-1] == 26
    assert nn.Conv2d(1, 1, 3, stride=2, padding=1)(x).shape[-1] == 14


def test_weight_decay_groups_skip_biases_and_norms():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))
    model(torch.randn(1, 3, 5, 5))
    decay, no_decay = weight_decay_groups(model, 5e-4)
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0
    assert len(decay["params"]) == 2 and len(no_decay["params"]) == 4
