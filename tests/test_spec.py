"""The layer-spec builder: text and YAML models, their parameter counts, and their error messages."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.models import MODELS, create_model
from cnnlab.models.layers import Maxout
from cnnlab.models.spec import build_from_spec, register_spec_file
from cnnlab.models.summary import summarize

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: small tensors run fastest on one thread


SEED = """
conv 16 3 same relu
conv 16 3 same relu
maxpool 2
conv 32 3 same relu
conv 32 3 same relu
maxpool 2
conv 64 3 same relu
conv 64 3 same relu
flatten
dense 128 relu
dense 10
"""

SEED_YAML = """\
name: seed
defaults: {padding: same, activation: relu}
layers:
  - conv 16 3
  - conv 16 3
  - maxpool 2
  - {type: conv, filters: 32, kernel: 3}
  - conv 32 3
  - maxpool 2
  - conv 64 3
  - conv 64 3
  - flatten
  - dense 128
  - dense classes
"""


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_seed_model_spec_has_the_notes_474618_parameters():
    model = build_from_spec(SEED, num_classes=10, in_chans=1, input_size=(28, 28))
    assert n_params(model) == 474_618
    assert n_params(model) == n_params(create_model("seed_cnn", 10, 1, (28, 28)))
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert model.forward_head(model.forward_features(torch.randn(2, 1, 28, 28)), pre_logits=True).shape == (
        2,
        128,
    )
    assert "Total params: 474,618" in str(summarize(model, (1, 28, 28)))


def test_yaml_file_with_defaults_and_mappings_through_create_model(tmp_path):
    path = tmp_path / "seed.yaml"
    path.write_text(SEED_YAML)
    model = create_model(str(path), num_classes=10, in_chans=1, input_size=(28, 28))
    assert n_params(model) == 474_618
    two = create_model(str(path), num_classes=2, in_chans=1, input_size=(28, 28))  # `dense classes`
    assert two(torch.randn(1, 1, 28, 28)).shape == (1, 2)


def test_txt_file_compact_string_and_registration(tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text("# a tiny net\nconv 8 3 same relu bn; maxpool 2\ngap\ndense classes\n")
    model = create_model(str(path), num_classes=3, in_chans=3, input_size=(16, 16))
    assert isinstance(model.features[1], nn.BatchNorm2d) and model(torch.randn(2, 3, 16, 16)).shape == (2, 3)
    name = register_spec_file(path, name="tiny_spec_test")
    assert name in MODELS and create_model(name, 4, 3, (16, 16))(torch.randn(1, 3, 16, 16)).shape == (1, 4)


def test_layer_options_strides_pools_dropout_init():
    spec = [
        "conv 8 3 valid s2 elu",
        "minpool 2",
        "avgpool 2 same",
        "alphadropout 0.1",
        "leaky_relu:0.2",
        "flatten",
        "dense 16 selu",
        "dropout 0.3",
        "dense 5",
    ]
    model = build_from_spec(spec, 5, 3, (32, 32), init="zeros", bias_init=0.01)
    conv = model.features[0]
    assert conv.stride == (2, 2) and conv.padding == (0, 0)
    assert (conv.weight == 0).all() and (conv.bias == 0.01).all()
    assert [type(m).__name__ for m in model.features][1:] == [
        "ELU",
        "MinPool2d",
        "AvgPool2d",
        "AlphaDropout",
        "LeakyReLU",
        "Flatten",
    ]
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 5)


def test_maxout_layers_widen_then_take_the_max():
    model = build_from_spec(["conv 8 3 same maxout:3", "gap", "dense 16 maxout", "dense 4"], 4, 1, (8, 8))
    assert model.features[0].out_channels == 24 and isinstance(model.features[1], Maxout)
    assert model.head[0].out_features == 32 and model.head[1].pieces == 2
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 4)


def test_activation_override_replaces_hidden_activations():
    model = build_from_spec(SEED, 10, 1, (28, 28), activation="tanh")
    kinds = {type(m).__name__ for m in model.modules()}
    assert "Tanh" in kinds and "ReLU" not in kinds


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            "conv 16 3 same relu\nconvv 8 3\nflatten\ndense 10",
            r"line 2 \(`convv 8 3`\): unknown layer 'convv'",
        ),
        ("conv 16 3 same relu\nconv 8 3 sideways\nflatten\ndense 10", "line 2 .*cannot read 'sideways'"),
        (
            "conv 16 3 same swish\nflatten\ndense 10",
            "line 1 .*cannot read 'swish'.*an activation: sigmoid, tanh, relu",
        ),
        ("conv 16 3\ndense 10", "line 2 .*dense needs a flat input"),
        ("flatten\nconv 16 3\ndense 10", "line 2 .*conv needs an image input"),
        ("conv 16 40\nflatten\ndense 10", "line 1 .*does not fit its input of shape"),
        ("conv\nflatten\ndense 10", "line 1 .*missing the number of filters"),
        ("conv 16 3\nflatten\ndense 7", "line 3 .*7 units but the data has 10 classes.*dense classes"),
        ("conv 16 3\nflatten\ndense 10 softmax", "line 3 .*remove its activation 'softmax'"),
        ("conv 16 3\nflatten", "line 2 .*must end with its classifier"),
        ("conv 16 3\nflatten\ndropout 1.5\ndense 10", "line 3 .*dropout rate"),
        ("conv -4 3\nflatten\ndense 10", "line 1"),
    ],
)
def test_bad_lines_name_the_line_and_the_problem(spec, message):
    with pytest.raises(CnnlabError, match=message):
        build_from_spec(spec, 10, 1, (28, 28))


def test_yaml_errors_carry_the_file_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("layers:\n  - conv 16 3 same relu\n  # comment\n  - pool 2\n  - flatten\n  - dense 10\n")
    with pytest.raises(CnnlabError, match=r"bad.yaml: line 4 \(`pool 2`\): unknown layer"):
        create_model(str(path), 10, 1, (28, 28))
    path.write_text("layers:\n  - {type: conv, filters: 8, colour: red}\n")
    with pytest.raises(CnnlabError, match="line 2 .*unknown option.*colour"):
        create_model(str(path), 10, 1, (28, 28))
    path.write_text("layer: [conv 8 3]\n")
    with pytest.raises(CnnlabError, match="layers"):
        create_model(str(path), 10, 1, (28, 28))
    with pytest.raises(CnnlabError, match="not found"):
        create_model(str(tmp_path / "none.yaml"), 10, 1, (28, 28))
