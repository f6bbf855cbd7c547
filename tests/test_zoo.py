"""Every registered model: a generated forward/backward test, its summary, its head API; and the reference
parameter counts of the issue (torchvision's numbers for the ImageNet models, the papers' for CIFAR)."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

from cnnlab.errors import CnnlabError
from cnnlab.models import MODELS, create_model
from cnnlab.models.summary import summarize

TINY = (3, 16, 16)  # every zoo model takes 16x16 (ImageNet-sized ones switch to their small-input variant)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: small tensors run fastest on one thread


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _loss(out, y, model) -> torch.Tensor:
    if isinstance(out, tuple):  # GoogLeNet in training: (logits, aux1, aux2)
        return F.cross_entropy(out[0], y) + model.aux_loss_weight * sum(F.cross_entropy(a, y) for a in out[1:])
    return F.cross_entropy(out, y)


@pytest.mark.parametrize("name", MODELS.names())
def test_every_model_trains_one_step_summarizes_and_has_the_head_api(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=5, in_chans=TINY[0], input_size=TINY[1:])
    model.train()
    x, y = torch.randn(2, *TINY), torch.tensor([1, 3])
    out = model(x)
    logits = out[0] if isinstance(out, tuple) else out
    assert logits.shape == (2, 5)
    _loss(out, y, model).backward()
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for _, p in params)
    assert any(p.grad.abs().sum() > 0 for _, p in params[:3])  # gradients reach the first layers
    summary = summarize(model, TINY)
    assert summary.total == n_params(model) and summary.rows
    assert "Total params" in str(summary)
    _check_head_api_and_groups(model, x)


def _check_head_api_and_groups(model: torch.nn.Module, x: torch.Tensor) -> None:
    model.eval()
    with torch.no_grad():
        feats = model.forward_head(model.forward_features(x), pre_logits=True)
        assert feats.dim() == 2 and feats.shape[1] == model.get_classifier().in_features
        model.reset_classifier(7)
        assert model(x).shape == (2, 7)
    assert isinstance(model.default_cfg, dict)
    patterns = []
    for value in model.group_matcher().values():
        patterns += [v[0] for v in value] if isinstance(value, list) else [value]
    unmatched = [n for n, _ in model.named_parameters() if not any(re.match(p, n) for p in patterns)]
    assert not unmatched, f"parameters in no layer group: {unmatched[:5]}"


# (name, kwargs, reference count): torchvision's counts (torchvision.models.<name>(weights=None))
IMAGENET_COUNTS = [
    ("resnet18", {}, 11_689_512),
    ("resnet34", {}, 21_797_672),
    ("resnet50", {}, 25_557_032),
    ("resnet101", {}, 44_549_160),
    ("resnet152", {}, 60_192_808),
    ("vgg11", {}, 132_863_336),
    ("vgg13", {}, 133_047_848),
    ("vgg16", {}, 138_357_544),
    ("vgg19", {}, 143_667_240),
    ("vgg11_bn", {}, 132_868_840),
    ("vgg16_bn", {}, 138_365_992),
    ("vgg19_bn", {}, 143_678_248),
    ("alexnet", {}, 61_100_840),
    ("googlenet", {"aux_logits": False}, 6_624_904),
    ("googlenet", {}, 13_004_888),
    ("densenet121", {}, 7_978_856),
    ("densenet169", {}, 14_149_480),
    ("densenet201", {}, 20_013_928),
    ("mobilenet_v1", {}, 4_231_976),  # Howard et al. 2017: 4.2 M
]


@pytest.mark.parametrize(("name", "kwargs", "expected"), IMAGENET_COUNTS)
def test_imagenet_parameter_counts_match_torchvision(name, kwargs, expected):
    with torch.device("meta"):  # counts only: no memory, no init time
        model = create_model(name, num_classes=1000, input_size=(224, 224), **kwargs)
    assert n_params(model) == expected


# the papers' counts: He et al. 2016 (ResNet-20 0.27 M, -32 0.46 M, -44 0.66 M, -56 0.85 M, -110 1.7 M),
# Huang et al. 2017 (DenseNet-BC L=100 k=12: 0.8 M)
CIFAR_COUNTS = [
    ("resnet20", 0.27e6, 269_722),
    ("resnet32", 0.46e6, 464_154),
    ("resnet44", 0.66e6, 658_586),
    ("resnet56", 0.85e6, 853_018),
    ("resnet110", 1.7e6, 1_727_962),
    ("densenet_bc_100", 0.8e6, 769_162),
]


@pytest.mark.parametrize(("name", "paper", "exact"), CIFAR_COUNTS)
def test_cifar_parameter_counts_match_the_papers(name, paper, exact):
    count = n_params(create_model(name, num_classes=10, input_size=(32, 32)))
    assert count == exact
    assert abs(count - paper) / paper < 0.05


def test_option_b_shortcuts_add_projections_and_preact_is_bn_relu_conv():
    a = create_model("resnet20", 10, shortcut="A")
    b = create_model("resnet20", 10, shortcut="B")
    assert n_params(b) - n_params(a) == (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)  # two 1x1 conv + BN
    pre = create_model("resnet56", 10, preact=True)
    block = pre.layer2[1]
    assert [type(m).__name__ for m in block.children()][:3] == ["BatchNorm2d", "ReLU", "Conv2d"]
    with pytest.raises(CnnlabError, match="shortcut"):
        create_model("resnet20", 10, shortcut="C")


@pytest.mark.parametrize("name", ["resnet18", "densenet121", "googlenet"])
def test_imagenet_layout_equals_torchvision(name):
    """Same keys and same outputs as torchvision's model: its checkpoints load strictly into ours."""
    import torchvision

    kwargs = {"aux_logits": True, "init_weights": False} if name == "googlenet" else {}
    ref = getattr(torchvision.models, name)(weights=None, **kwargs).eval()
    ours = create_model(name, num_classes=1000, input_size=(224, 224)).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        assert torch.allclose(ours(x), ref(x), atol=1e-5)


@pytest.mark.parametrize("name", ["alexnet", "resnet50", "mobilenet_v1", "preact_resnet18", "densenet121"])
def test_imagenet_variants_run_on_larger_inputs(name):
    model = create_model(name, num_classes=3, input_size=(224, 224)).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 3)


def test_small_input_variant_is_chosen_automatically():
    big = create_model("resnet18", 10, input_size=(224, 224))
    small = create_model("resnet18", 10, input_size=(32, 32))
    assert big.conv1.kernel_size == (7, 7) and small.conv1.kernel_size == (3, 3)
    assert create_model("resnet18", 10, input_size=(32, 32), small_input=False).conv1.kernel_size == (7, 7)


def test_googlenet_aux_heads_only_in_training():
    model = create_model("googlenet", 4, input_size=(32, 32))
    assert model.aux_loss_weight == 0.3
    out = model.train()(torch.randn(2, 3, 32, 32))
    assert isinstance(out, tuple) and len(out) == 3 and all(o.shape == (2, 4) for o in out)
    assert model.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 4)
    plain = create_model("googlenet", 4, input_size=(32, 32), aux_logits=False).train()
    assert plain(torch.randn(2, 3, 32, 32)).shape == (2, 4)


@pytest.mark.parametrize("activation", ["sigmoid", "tanh", "relu", "leaky_relu:0.2", "elu", "selu", "gelu", "maxout"])
@pytest.mark.parametrize(
    "name",
    ["lenet5", "alexnet", "resnet20", "vgg11", "densenet_bc_100", "mobilenet_v1", "googlenet", "selu_cnn"],
)
def test_every_activation_in_zoo_models(name, activation):
    kwargs = {"depth": 22} if name == "densenet_bc_100" else {}
    model = create_model(name, 3, input_size=(16, 16), activation=activation, **kwargs).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 16, 16))
    assert out.shape == (2, 3) and torch.isfinite(out).all()


def test_zoo_options_init_norm_pool_dropout():
    m = create_model(
        "vgg11", 3, input_size=(32, 32), init="zeros", bias_init=0.01, norm="batch", pool="min", dropout=0.3
    )
    assert (m.features[0].weight == 0).all() and (m.features[0].bias == 0.01).all()
    assert any(type(x).__name__ == "MinPool2d" for x in m.features)
    assert any(isinstance(x, torch.nn.BatchNorm2d) for x in m.features)
    r = create_model("resnet20", 3, norm="none")
    assert not any(isinstance(x, torch.nn.BatchNorm2d) for x in r.modules()) and r.conv1.bias is not None
    lecun = create_model("resnet20", 3, init="lecun_normal")
    assert lecun.conv1.weight.std().item() == pytest.approx(1 / 27**0.5, rel=0.3)


@pytest.mark.parametrize(
    ("option", "value"),
    [("activation", "swish"), ("init", "orthogonal"), ("norm", "layer"), ("pool", "median")],
)
def test_unknown_option_values_list_the_choices(option, value):
    with pytest.raises(CnnlabError, match="choose one of"):
        create_model("vgg11", 3, input_size=(32, 32), **{option: value})


def test_mobilenet_width_and_leaky_relu():
    m = create_model("mobilenet_v1", 10, input_size=(224, 224), width=0.25, activation="leaky_relu", slope=0.1)
    acts = [x for x in m.modules() if isinstance(x, torch.nn.LeakyReLU)]
    assert acts and all(a.negative_slope == 0.1 for a in acts)
    assert m.fc.in_features == 256 and m.stage1[0][0].out_channels == 8
    with pytest.raises(CnnlabError, match="slope"):
        create_model("mobilenet_v1", 10, slope=0.1)


def test_selu_networks_self_normalize():
    torch.manual_seed(0)
    model = create_model("selu_mlp", 10, in_chans=1, input_size=(28, 28), hidden=(256,) * 8).eval()
    x = torch.randn(512, 1, 28, 28)
    h = model.features(x)
    for layer in model.head[:-1]:
        h = layer(h)
    assert abs(h.mean().item()) < 0.2 and 0.7 < h.std().item() < 1.3  # still ~N(0, 1) after 8 layers
    assert any(isinstance(m, torch.nn.AlphaDropout) for m in model.modules())
    assert any(isinstance(m, torch.nn.AlphaDropout) for m in create_model("selu_cnn", 10, in_chans=1).modules())
