"""Keras-style summaries: the seed CNN's counts and shapes, and the notes' two conv checks."""

from torch import nn

import cnnlab
from cnnlab.models.summary import format_summary, summarize

SEED_PARAMS = [160, 2320, 4640, 9248, 18496, 36928, 401536, 1290]
SEED_SHAPES = [(28, 28, 16), (28, 28, 16), (14, 14, 16), (14, 14, 32), (14, 14, 32), (7, 7, 32), (7, 7, 64),
               (7, 7, 64), (3136,), (128,), (10,)]


def test_seed_cnn_counts_and_shapes_match_the_notes():
    model = cnnlab.create_model("seed_cnn", 10, in_chans=1, input_size=(28, 28))
    s = summarize(model, (1, 28, 28))
    assert [r.output_shape for r in s.rows] == SEED_SHAPES
    assert [r.params for r in s.rows if r.params] == SEED_PARAMS
    assert s.total == s.trainable == 474_618 and s.non_trainable == 0
    text = format_summary(s)
    assert "3*3*16*32 + 32 = 4640" in text and "3136*128 + 128 = 401536" in text
    assert "Total params: 474,618" in text


def test_notes_conv_checks():
    conv = nn.Sequential(nn.Conv2d(3, 32, 3))
    assert summarize(conv, (3, 150, 150)).rows[0].params == 896
    conv = nn.Sequential(nn.Conv2d(32, 64, 3))
    row = summarize(conv, (32, 20, 20)).rows[0]
    assert row.params == 18_496 and row.formula == "3*3*32*64 + 64 = 18496"


def test_frozen_layers_count_as_non_trainable():
    model = cnnlab.create_model("seed_cnn", 10, in_chans=1, input_size=(28, 28))
    for p in model.features.parameters():
        p.requires_grad = False
    s = summarize(model, (1, 28, 28))
    assert s.trainable == 401_536 + 1_290 and s.non_trainable == 474_618 - s.trainable


def test_summary_function_prints(capsys):
    cnnlab.summary(cnnlab.create_model("mlp", 10, 1, (8, 8)), (1, 8, 8))
    out = capsys.readouterr().out
    assert "Total params" in out and "64*256 + 256 = 16640" in out
