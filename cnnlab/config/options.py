"""Per-field metadata of the config (the one table of options) and setting a field from outside.

Every field of a config section is declared with `option(default, help, ...)`: its CLI flag, its `fit()` keyword,
its help text, its choices and its check live on that one line (cnnlab/config/schema.py). `cnnlab train` flags,
`cnnlab.fit(**kwargs)`, `--set section.key=value`, config.yaml and the early validation are all generated from it.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import yaml

from cnnlab.errors import CnnlabError

Choices = tuple[Any, ...] | Callable[[], list[str]] | None


@dataclass(frozen=True)
class Option:
    """What a config field is to its users: flag, keyword, help, choices and an optional check."""

    help: str
    flag: str | None = None  # "--lr"; derived from the field name when not given
    keyword: str | None = None  # fit(lr=...); derived from the field name when not given
    choices: Choices = None  # allowed values: a tuple, or a function listing them (a registry's names)
    check: Callable[[Any], str | None] | None = None  # returns what is wrong with a value, or None
    metavar: str | None = None
    many: bool = False  # a list field whose items are each one of `choices`
    parse: Callable[[Any], Any] | None = None  # normalises a coerced value (e.g. 'a-b' -> 'a_b')


def option(default: Any, help: str, *, flag: str | None = None, keyword: str | None = None,
           choices: Choices = None, check: Callable[[Any], str | None] | None = None, metavar: str | None = None,
           many: bool = False, parse: Callable[[Any], Any] | None = None) -> Any:
    """A dataclass field with its Option metadata; lists and dicts get a fresh default per instance."""
    meta = {"option": Option(help, flag, keyword, choices, check, metavar, many, parse)}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


class Section:
    """Base of every config section: an ordinary dataclass until `freeze`, read-only after it."""

    def __setattr__(self, name: str, value: Any) -> None:
        if self.__dict__.get("_frozen"):
            raise dataclasses.FrozenInstanceError(
                f"the resolved config is read-only (cannot set {type(self).__name__}.{name}); change a copy: "
                "cfg.copy(), or pass the setting to fit / --set")
        object.__setattr__(self, name, value)

    def freeze(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Section):
                value.freeze()
        object.__setattr__(self, "_frozen", True)

    @property
    def frozen(self) -> bool:
        return bool(self.__dict__.get("_frozen"))


@dataclass(frozen=True)
class Field:
    """One leaf field of the config: its dotted path, type hint, default and Option."""

    path: str  # "train.lr"
    hint: Any
    default: Any
    option: Option

    @property
    def name(self) -> str:
        return self.path.rsplit(".", 1)[-1]

    @property
    def flag(self) -> str:
        return self.option.flag or "--" + self.name.replace("_", "-")

    @property
    def keyword(self) -> str:
        return self.option.keyword or self.name

    @property
    def is_bool(self) -> bool:
        return _non_none(self.hint) == (bool,)

    def choices(self) -> list[Any] | None:
        c = self.option.choices
        return list(c()) if callable(c) else (list(c) if c is not None else None)


def _non_none(hint: Any) -> tuple[Any, ...]:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return tuple(a for a in typing.get_args(hint) if a is not type(None))
    return (hint,)


def iter_fields(section_type: type, prefix: str = "") -> Iterator[Field]:
    """Every leaf field of a config dataclass, depth first, in declaration order."""
    hints = typing.get_type_hints(section_type)
    for f in dataclasses.fields(section_type):
        path = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(hints[f.name]):
            yield from iter_fields(hints[f.name], path + ".")
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        yield Field(path, hints[f.name], default, f.metadata.get("option") or Option(help=""))


# ------------------------------------------------------------------------------------------------------------
# setting a value: coerced to the field's type and checked against its choices and check


def coerce(value: Any, hint: Any, where: str) -> Any:
    """Convert `value` (often a string from the command line) to the field's type."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, where)
            except (ValueError, TypeError, CnnlabError) as e:
                errors.append(str(e))
        raise CnnlabError(f"{where}: cannot use {value!r} ({'; '.join(errors)})")
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        raise CnnlabError(f"{where}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise CnnlabError(f"{where}: expected a whole number, got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise CnnlabError(f"{where}: expected a whole number, got {value!r}") from None
    if hint is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise CnnlabError(f"{where}: expected a number, got {value!r}") from None
    if hint is str:
        if isinstance(value, (dict, list)):
            raise CnnlabError(f"{where}: expected text, got {value!r}")
        return str(value).lower() if isinstance(value, bool) else str(value)
    if origin is list:
        return [coerce(v, args[0], where) for v in _as_list(value)]
    if origin is dict:
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, dict):
            raise CnnlabError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    return value


def _as_list(value: Any) -> list[Any]:
    if isinstance(value, str):
        parsed = yaml.safe_load(value)
        if isinstance(parsed, str):  # a,b,c
            return [v.strip() for v in parsed.split(",") if v.strip()]
        return [] if parsed is None else parsed if isinstance(parsed, list) else [parsed]
    return list(value)


def check_value(field: Field, value: Any, where: str | None = None) -> Any:
    """The value with every choice spelt as the table spells it (`Squash` -> `squash`), or CnnlabError for a value
    outside the field's choices or one its check rejects; the message names the option."""
    where = where or field.flag
    allowed = field.choices()
    if allowed is not None and value is not None:
        items = []
        for item in (value if field.option.many else [value]):
            if item not in allowed and str(item).lower() not in allowed:
                close = difflib.get_close_matches(str(item), [str(a) for a in allowed], n=1, cutoff=0.6)
                hint = f"did you mean {close[0]}? " if close else ""
                raise CnnlabError(f"unknown {where} '{item}': {hint}choose from {', '.join(map(str, allowed))}")
            items.append(item if item in allowed else str(item).lower())
        value = items if field.option.many else items[0]
    if field.option.check is not None and value is not None:
        problem = field.option.check(value)
        if problem:
            raise CnnlabError(f"{where} {problem}, got {value!r}")
    return value


def set_value(cfg: Any, dotted: str, value: Any, where: str | None = None) -> None:
    """Set `section.key` (or a top-level key) to `value`, converting it to the field's type."""
    parts = dotted.split(".")
    target: Any = cfg
    for part in parts[:-1]:
        if not dataclasses.is_dataclass(target) or part not in _names(target):
            raise CnnlabError(f"unknown config section '{part}' in '{dotted}': sections are "
                              f"{', '.join(_names(cfg))}")
        target = getattr(target, part)
    key = parts[-1]
    names = _names(target)
    if key not in names:
        close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
        hint = f" (did you mean {'.'.join([*parts[:-1], close[0]])}?)" if close else ""
        raise CnnlabError(f"unknown config key '{dotted}'{hint}: {'.'.join(parts[:-1]) or 'top level'} has "
                          f"{', '.join(names)}")
    hint = typing.get_type_hints(type(target))[key]
    if dataclasses.is_dataclass(getattr(target, key)):
        if not isinstance(value, dict):
            raise CnnlabError(f"config section '{dotted}' must be a mapping")
        for k, v in value.items():
            set_value(cfg, f"{dotted}.{k}", v)
        return
    value = coerce(value, hint, where or dotted)
    f = next(f for f in dataclasses.fields(target) if f.name == key)
    parse = getattr(f.metadata.get("option"), "parse", None)
    setattr(target, key, parse(value) if parse is not None and value is not None else value)


def _names(section: Any) -> list[str]:
    return [f.name for f in dataclasses.fields(section)]
