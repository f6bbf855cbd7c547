"""`cnnlab train` flags generated from the config table (cnnlab/config/schema.py), and back to fit() keywords.

Every field gets its flag in the argument group of its section, with its help, choices and default; a bool is
`--x / --no-x`, a dict (model options) is a repeatable KEY=VALUE. Values stay text here: the config coerces and
checks them, so a flag, a keyword and a config.yaml entry follow the same rules.
"""

from __future__ import annotations

import argparse
from typing import Any

import yaml

from cnnlab.config import Field, fields
from cnnlab.errors import CnnlabError

SECTION_TITLES = {"data": "data", "model": "model", "augment": "augmentation (a preset fills the rest)",
                  "train": "training", "callbacks": "callbacks", "balance": "imbalanced data",
                  "transfer": "transfer learning", "distributed": "distributed (torch.distributed)", "": "run"}


def describe(f: Field) -> str:
    """The help line of a field: its text, its choices and its default."""
    text = f.option.help
    choices = f.choices()
    if choices is not None and not any(str(c) in text for c in choices):
        text += f" ({', '.join(map(str, choices))})"
    default = f.default
    if default not in (None, [], {}) and not f.is_bool:
        text += f"; default {default}"
    elif f.is_bool and default:
        text += "; on by default"
    return text.replace("%", "%%")


def add_config_options(parser: argparse.ArgumentParser, rename: dict[str, str] | None = None) -> None:
    """One flag per config field (DATA is the positional argument), grouped by section; `rename` gives a field
    another flag where a command has its own flag of that name (tune: --workers is its worker processes)."""
    groups: dict[str, Any] = {}
    for f in fields():
        if f.flag == "DATA":
            parser.add_argument("data", nargs="?", help=f.option.help)
            continue
        section = f.path.rpartition(".")[0]
        if section not in groups:
            groups[section] = parser.add_argument_group(SECTION_TITLES.get(section, section))
        kwargs: dict[str, Any] = {"dest": f.keyword, "default": None, "help": describe(f)}
        if f.is_bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif isinstance(f.default, dict):
            kwargs.update(action="append", metavar=f.option.metavar or "KEY=VALUE")
        else:
            kwargs["metavar"] = f.option.metavar or f.name.upper()
        groups[section].add_argument((rename or {}).get(f.flag, f.flag), **kwargs)


def config_keywords(args: argparse.Namespace) -> dict[str, Any]:
    """fit() keywords of the config flags that were given (a dict field's KEY=VALUE list becomes a mapping)."""
    out: dict[str, Any] = {}
    for f in fields():
        if f.flag == "DATA":
            continue
        value = getattr(args, f.keyword, None)
        if value is not None and isinstance(f.default, dict):
            value = key_values(value, f.flag)
        out[f.keyword] = value
    return out


def given_flags(args: argparse.Namespace) -> list[str]:
    """The config flags a command line gave (for refusing them where they do not apply)."""
    return [f.flag for f in fields() if f.flag != "DATA" and getattr(args, f.keyword, None) is not None]


def key_values(items: list[str], flag: str) -> dict[str, Any]:
    """KEY=VALUE strings -> {KEY: YAML-parsed VALUE}."""
    out = {}
    for item in items:
        if "=" not in item:
            raise CnnlabError(f"{flag} expects KEY=VALUE, got '{item}'")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out
