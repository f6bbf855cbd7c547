"""The one table of options: every config field has a flag and a keyword; each reaches the config and survives a
round trip through config.yaml; flags and keywords are unique; bad values are refused before any data is read."""

from __future__ import annotations

import typing

import pytest
import yaml

from cnnlab.cli import build_parser
from cnnlab.cli.options import config_keywords
from cnnlab.config import Field, build_config, config_from_dict, config_to_yaml, fields
from cnnlab.errors import CnnlabError

# what a valid config needs beside some sample values (a transfer strategy needs weights to transfer)
NEEDS = {"transfer.strategy": {"weights": "w.pt"}, "transfer.head": {"weights": "w.pt",
                                                                     "strategy": "feature-extract"}}
SPECIAL = {"data.source": "cifar10", "model.name": "lenet5", "model.kwargs": {"dropout": 0.3},
           "train.device": "cpu", "callbacks.monitor": "val_loss", "data.mean": [0.5, 0.4, 0.3],
           "data.std": [0.2, 0.2, 0.25], "balance.weights": [1.0, 2.5], "balance.methods": ["oversample"],
           "train.epochs": 7, "train.batch_size": 16, "transfer.head": "logreg", "out": "runs/options-test",
           "task": "mypackage.tasks:MyTask"}


def sample(f: Field):
    """A valid value for the field that is not its default."""
    if f.path in SPECIAL:
        return SPECIAL[f.path]
    choices = f.choices()
    if choices:
        return next(c for c in choices if c != f.default)
    kinds = [a for a in typing.get_args(f.hint) if a is not type(None)] or [f.hint]
    if bool in kinds:
        return not f.default
    if float in kinds:
        return 0.25 if f.default != 0.25 else 0.3
    if int in kinds:
        return (f.default or 0) + 3
    return "some/path.zip"


def as_argv(f: Field, value) -> list[str]:
    if f.flag == "DATA":
        return [str(value)]
    if f.is_bool:
        return [f.flag if value else f"--no-{f.flag[2:]}"]
    if isinstance(value, dict):
        return [x for k, v in value.items() for x in (f.flag, f"{k}={v}")]
    if isinstance(value, list):
        return [f.flag, ",".join(map(str, value))]
    return [f.flag, str(value)]


def get(cfg, path: str):
    target = cfg
    for part in path.split("."):
        target = getattr(target, part)
    return target


def round_trip(cfg):
    return config_from_dict(yaml.safe_load(config_to_yaml(cfg)))


def test_flags_and_keywords_are_unique_and_every_field_has_both():
    table = fields()
    assert len(table) > 80
    assert len({f.flag for f in table}) == len(table)
    assert len({f.keyword for f in table}) == len(table)
    assert all(f.option.help for f in table)


@pytest.mark.parametrize("f", fields(), ids=lambda f: f.path)
def test_every_flag_parses_reaches_the_config_and_round_trips(f):
    value = sample(f)
    extra = NEEDS.get(f.path, {})
    argv = ["train", *(["digits"] if f.flag != "DATA" else []), *as_argv(f, value)]
    argv += [x for k, v in extra.items() for x in ("--" + k.replace("_", "-"), v)]
    args = build_parser().parse_args(argv)
    cfg = build_config(args.data, None, [], **config_keywords(args))
    assert get(cfg, f.path) == value
    assert get(round_trip(cfg), f.path) == value


@pytest.mark.parametrize("f", fields(), ids=lambda f: f.path)
def test_every_keyword_reaches_the_config_and_round_trips(f):
    value = sample(f)
    cfg = build_config(**{f.keyword: value}, **NEEDS.get(f.path, {}))  # data= is build_config's own parameter
    assert get(cfg, f.path) == value
    assert get(round_trip(cfg), f.path) == value
    dotted = build_config(None, None, [f"{f.path}={yaml.safe_dump(value, default_flow_style=True).strip()}"],
                          **NEEDS.get(f.path, {}))
    assert get(dotted, f.path) == value


@pytest.mark.parametrize("kwargs,needle", [
    ({"model": "seed_cn"}, "unknown model 'seed_cn': did you mean seed_cnn"),
    ({"optimizer": "adamm"}, "unknown --optimizer 'adamm': did you mean adam"),
    ({"loss": "crossentropy"}, "unknown --loss 'crossentropy'"),
    ({"schedule": "cosin"}, "did you mean cosine"),
    ({"normalize": "zcaa"}, "unknown --normalize 'zcaa'"),
    ({"strategy": "fine_tune", "weights": "w.pt"}, "did you mean fine-tune"),
    ({"balance": "oversample,smotte"}, "unknown --balance 'smotte'"),
    ({"val_split": 1.5}, "--val-split must be in [0, 1)"),
    ({"batch_size": "lots"}, "--batch-size must be a positive number"),
    ({"lr": -1}, "--lr must be positive"),
    ({"hflip": 2}, "--hflip is a probability"),
    ({"strategy": "fine-tune"}, "transfers pretrained weights"),
    ({"lrr": 0.1}, "unknown option 'lrr' for fit(): did you mean lr?"),
])
def test_bad_values_are_refused_by_the_table(kwargs, needle):
    with pytest.raises(CnnlabError) as info:
        build_config("digits", **kwargs)
    assert needle in str(info.value)


def test_a_choice_in_other_case_is_stored_as_the_table_spells_it():
    cfg = build_config("digits", resize="Squash", val_source="Test", normalize="ZCA", balance="Oversample,threshold")
    assert (cfg.data.resize, cfg.data.val_source, cfg.data.normalize) == ("squash", "test", "zca")
    assert cfg.balance.methods == ["oversample", "threshold"]


def test_precedence_defaults_file_keywords_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 0.1\n  epochs: 4\nmodel:\n  name: lenet5\n")
    cfg = build_config("digits", str(path), ["train.epochs=9"], lr=0.2)
    assert (cfg.train.lr, cfg.train.epochs, cfg.model.name, cfg.train.seed) == (0.2, 9, "lenet5", 0)
