"""Multi-scale feature maps (cnnlab.models.backbone): for each zoo family the count, channels and strides that
`feature_info` reports equal those of a real forward pass and the numbers checked by hand (and against timm's
equivalents); timm models give timm's own numbers; the extractor shares the classifier's parameters and never holds
its head; models without maps are refused in one line."""

from __future__ import annotations

import pytest
import timm
import torch

from cnnlab.errors import CnnlabError
from cnnlab.models import create_backbone, create_model, feature_extractor
from cnnlab.models.spec import build_from_spec

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: small tensors run fastest on one thread

IMAGENET = [4, 8, 16, 32]  # C2..C5
SMALL3 = [1, 2, 4]  # the three stages of the CIFAR layouts and seed_cnn

# (name, builder kwargs, input side, channels, reductions) with the default out_indices (the deepest four levels).
# ImageNet stems need inputs over 64 px (or small_input=False); at 64 px and below the stride-1 stems are chosen.
# hidden=64 keeps the 4096-wide dense heads of alexnet / vgg (built, then left out of the extractor) cheap.
CASES = [
    ("seed_cnn", {}, 64, [16, 32, 64], SMALL3),
    ("lenet5", {}, 28, [6, 16, 16], SMALL3),
    ("alexnet", {"hidden": 64}, 96, [64, 192, 256, 256], IMAGENET),
    ("alexnet", {"hidden": 64}, 32, [64, 192, 256, 256], [1, 2, 4, 8]),
    ("vgg11", {}, 32, [128, 256, 512, 512], [2, 4, 8, 16]),
    ("vgg11_bn", {"hidden": 64}, 96, [256, 512, 512, 512], IMAGENET),
    ("resnet18", {}, 96, [64, 128, 256, 512], IMAGENET),
    ("resnet18", {}, 32, [64, 128, 256, 512], [1, 2, 4, 8]),
    ("preact_resnet18", {}, 96, [64, 128, 256, 512], IMAGENET),
    ("resnet20", {}, 32, [16, 32, 64], SMALL3),
    ("resnet20", {"preact": True, "shortcut": "B"}, 32, [16, 32, 64], SMALL3),
    ("resnet20", {"width": 32}, 32, [32, 64, 128], SMALL3),
    ("densenet121", {}, 96, [256, 512, 1024, 1024], IMAGENET),
    ("densenet_bc_100", {}, 32, [216, 300, 342], SMALL3),
    ("googlenet", {"aux_logits": False}, 96, [192, 480, 832, 1024], IMAGENET),
    ("mobilenet_v1", {}, 96, [128, 256, 512, 1024], IMAGENET),
    ("mobilenet_v1", {"width": 0.25}, 96, [32, 64, 128, 256], IMAGENET),
    ("mobilenet_v1", {"width": 0.5}, 64, [64, 128, 256, 512], [2, 4, 8, 16]),
    ("selu_cnn", {}, 32, [32, 64, 128, 128], [1, 2, 4, 8]),
]
# where valid (unpadded) convolutions make the maps a little smaller than input / reduction: their real sizes
INEXACT_SIZES = {("lenet5", 28): [28, 10, 5], ("alexnet", 96): [23, 11, 5, 2]}


def _model(name: str, kwargs: dict, side: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(name, num_classes=10, in_chans=3, input_size=(side, side), **kwargs).eval()


@pytest.mark.parametrize(("name", "kwargs", "side", "channels", "reductions"), CASES,
                         ids=[f"{c[0]}{c[1] or ''}@{c[2]}" for c in CASES])
def test_feature_info_matches_a_real_forward_and_the_known_numbers(name, kwargs, side, channels, reductions):
    model = _model(name, kwargs, side)
    backbone = feature_extractor(model)
    info = backbone.feature_info
    assert info.channels() == channels and info.reduction() == reductions
    x = torch.randn(1, 3, side, side)
    with torch.no_grad():
        maps = backbone(x)
        assert torch.equal(maps[-1], model.forward_features(x))  # the deepest map is the model's own features
    assert [m.shape[1] for m in maps] == channels
    sizes = INEXACT_SIZES.get((name, side), [side // r for r in reductions])
    assert [tuple(m.shape[2:]) for m in maps] == [(s, s) for s in sizes]
    for module in info.module_name():  # each map is the output of a module of the model under that name
        model.get_submodule(module)


def test_every_level_is_listed_and_out_indices_pick_them():
    every = create_backbone("resnet18", input_size=(96, 96), out_indices=range(5)).feature_info
    assert every.channels() == [64, 64, 128, 256, 512] and every.reduction() == [2, 4, 8, 16, 32]
    assert every.module_name() == ["act1", "layer1", "layer2", "layer3", "layer4"]  # the stem, then the stages
    model = _model("resnet18", {}, 96)
    assert feature_extractor(model, out_indices=2).feature_info.reduction() == [16, 32]
    picked = feature_extractor(model, out_indices=(-1, 1))
    assert picked.feature_info.reduction() == [4, 32]  # sorted shallow to deep
    assert len(picked(torch.randn(1, 3, 96, 96))) == 2
    assert "layer4" not in feature_extractor(model, out_indices=(1, 2))  # nothing deeper than asked is kept
    with pytest.raises(CnnlabError, match=r"out_indices \(5,\) do not fit ResNet, whose 5 levels are 0: 64ch/2"):
        feature_extractor(model, out_indices=(5,))


def test_the_extractor_shares_the_classifier_parameters_and_leaves_out_its_head():
    model = _model("resnet20", {}, 32)
    backbone = feature_extractor(model)
    ours = {id(p) for p in backbone.parameters()}
    assert ours <= {id(p) for p in model.parameters()}
    assert id(model.linear.weight) not in ours and not any(m is model.linear for m in backbone.modules())
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        before = backbone(x)
        model.conv1.weight.mul_(-2.0)  # a change in the classifier is a change in the backbone
        after = backbone(x)
    assert all(not torch.equal(a, b) for a, b in zip(before, after))
    torch.manual_seed(1)
    other = create_model("resnet20", num_classes=10, input_size=(32, 32)).eval()  # other weights
    model.load_state_dict(other.state_dict())  # weights loaded into the classifier are the backbone's
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(backbone(x), feature_extractor(other)(x)))


def test_building_an_extractor_leaves_the_model_as_it_was():
    model = _model("densenet_bc_100", {}, 32).train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    feature_extractor(model)
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())  # no running-stat update
    assert torch.equal(rng, torch.get_rng_state())  # nor a random draw: same seed, same weights after it


def test_timm_models_give_timm_numbers():
    backbone = create_backbone("timm:resnet18", in_chans=1).eval()
    assert type(backbone).__name__ == "FeatureListNet"  # timm's own features_only net
    every = timm.create_model("resnet18", features_only=True, in_chans=1).feature_info  # timm's default: all 5
    assert every.channels() == [64, 64, 128, 256, 512] and every.reduction() == [2, 4, 8, 16, 32]
    info = backbone.feature_info  # ours: the deepest four
    assert info.channels() == every.channels([1, 2, 3, 4]) == [64, 128, 256, 512]
    assert info.reduction() == every.reduction([1, 2, 3, 4]) == IMAGENET
    assert info.module_name() == ["layer1", "layer2", "layer3", "layer4"] and info.out_indices == (1, 2, 3, 4)
    maps = backbone(torch.randn(1, 1, 64, 64))
    assert [tuple(m.shape[1:]) for m in maps] == [(c, 64 // r, 64 // r) for c, r in zip(info.channels(), IMAGENET)]
    with pytest.raises(CnnlabError, match="do not fit model 'timm:resnet18'"):
        create_backbone("timm:resnet18", out_indices=(7,))


def test_a_built_timm_classifier_gives_the_maps_of_its_features_only_twin():
    torch.manual_seed(0)
    classifier = create_model("timm:resnet18", num_classes=10).eval()
    getter = feature_extractor(classifier)
    assert getter.feature_info.channels() == [64, 128, 256, 512] and getter.feature_info.reduction() == IMAGENET
    twin = create_backbone("timm:resnet18").eval()
    twin.load_state_dict(classifier.state_dict(), strict=False)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert all(torch.allclose(a, b) for a, b in zip(getter(x), twin(x)))


def test_layer_spec_models_are_cut_at_their_pools_and_strided_convs():
    spec = "conv 8 3 same relu; maxpool 2; conv 16 3 same relu bn; conv 16 3 s2 same relu; conv 32 3 same; gap; dense 5"
    backbone = feature_extractor(build_from_spec(spec, 5, 3, (32, 32)))
    assert backbone.feature_info.channels() == [8, 16, 32] and backbone.feature_info.reduction() == SMALL3
    assert backbone.feature_info.module_name() == ["features.1", "features.5", "features.8"]  # before the gap
    assert [tuple(m.shape[1:]) for m in backbone(torch.randn(1, 3, 32, 32))] == [(8, 32, 32), (16, 16, 16),
                                                                                 (32, 8, 8)]


@pytest.mark.parametrize("name", ["mlp", "selu_mlp"])
def test_models_without_feature_maps_are_refused_in_one_line(name):
    with pytest.raises(CnnlabError, match=f"model '{name}' gives no feature maps: it flattens the image") as e:
        create_backbone(name, input_size=(28, 28))
    assert "\n" not in str(e.value)
    with pytest.raises(CnnlabError, match="gives no feature maps"):
        feature_extractor(create_model(name, num_classes=3, input_size=(28, 28)))


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
def test_the_extractor_scripts():
    backbone = feature_extractor(_model("seed_cnn", {}, 32))
    x = torch.randn(2, 3, 32, 32)
    scripted = torch.jit.script(backbone)  # a plain loop over the modules: no hooks, no Python-side state
    assert all(torch.equal(a, b) for a, b in zip(scripted(x), backbone(x)))


def test_create_backbone_gives_the_trunk_of_the_classifier_built_with_the_same_seed():
    torch.manual_seed(3)
    backbone = create_backbone("resnet20", input_size=(32, 32), num_classes=7)
    torch.manual_seed(3)
    classifier = create_model("resnet20", num_classes=7, input_size=(32, 32))
    ours = list(backbone.state_dict().items())
    theirs = classifier.state_dict()
    assert ours and all(torch.equal(v, theirs[k]) for k, v in ours)  # unopened stages keep the model's keys
