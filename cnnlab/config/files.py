"""Building a Config from what a user gives (file, keywords, dotted overrides), YAML load / save, validation.

Precedence, lowest first: defaults < `--config FILE.yaml` < flags / `fit()` keywords < `--set section.key=value`.
The resolved config is written to every run folder as config.yaml; `cnnlab train --config runs/X/config.yaml`
reruns it.
"""

from __future__ import annotations

import difflib
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from cnnlab.config.options import Field, check_value, iter_fields, set_value
from cnnlab.config.schema import Config
from cnnlab.errors import CnnlabError
from cnnlab.models.registry import MODELS  # imports no torch: the built-in names are read from source

RECORD_KEYS = ("meta", "resolved")  # written into config.yaml by cnnlab for the record; not settings


@cache
def fields() -> tuple[Field, ...]:
    """Every leaf field of Config, in declaration order: the table of options."""
    return tuple(iter_fields(Config))


@cache
def fields_by_keyword() -> dict[str, Field]:
    return {f.keyword: f for f in fields()}


def apply_keywords(cfg: Config, kwargs: dict[str, Any], caller: str = "fit()") -> None:
    """Set fields from keywords (`lr=3e-4`, `quiet=True`, `train__lr=3e-4`); None means "not given"."""
    table = fields_by_keyword()
    for key, value in kwargs.items():
        if value is None:
            continue
        if key == "quiet":  # --quiet: epoch lines for logs, no progress bar
            key, value = "verbose", 2 if value else 1
        if key in table:
            set_value(cfg, table[key].path, value, table[key].keyword)
        elif "__" in key:
            set_value(cfg, key.replace("__", "."), value)
        else:
            close = difflib.get_close_matches(key, [*table, "quiet"], n=1, cutoff=0.6)
            hint = f"did you mean {close[0]}? " if close else ""
            raise CnnlabError(f"unknown option '{key}' for {caller}: {hint}options are the config's keywords "
                              "(cnnlab train --help) or section__key for any config field")


def apply_overrides(cfg: Config, overrides: list[str]) -> None:
    """Apply `section.key=value` strings (values parsed as YAML scalars: 3e-4, true, [1, 2])."""
    for item in overrides:
        if "=" not in item:
            raise CnnlabError(f"--set expects section.key=value, got '{item}' (e.g. --set train.lr=3e-4)")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            value = raw
        set_value(cfg, key.strip(), value)


def merge_dict(cfg: Config, data: dict[str, Any]) -> None:
    """Apply a nested mapping (a parsed config.yaml) onto `cfg`."""
    for key, value in data.items():
        if key not in RECORD_KEYS:
            set_value(cfg, key, value)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping read with yaml.safe_load; a missing or malformed file is one clear error."""
    path = Path(path)
    if not path.is_file():
        raise CnnlabError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise CnnlabError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise CnnlabError(f"{path} must hold a mapping of sections (data:, model:, train:, ...)")
    return data


def load_config(path: str | Path, base: Config | None = None) -> Config:
    """Read a YAML config (yaml.safe_load) onto `base` (default: the defaults)."""
    cfg = base or Config()
    merge_dict(cfg, read_yaml(path))
    return cfg


def config_from_dict(data: dict[str, Any]) -> Config:
    cfg = Config()
    merge_dict(cfg, data)
    return cfg


def config_to_yaml(cfg: Config, extra: dict[str, Any] | None = None) -> str:
    data = cfg.to_dict()
    if extra:
        data.update(extra)
    return yaml.safe_dump(data, sort_keys=False)


def build_config(data: str | None = None, config: str | Path | Config | dict | None = None,
                 overrides: list[str] | None = None, caller: str = "fit()", **kwargs: Any) -> Config:
    """Defaults < config (file, dict or Config) < keyword arguments < dotted overrides, then validated."""
    if isinstance(config, Config):
        cfg = config_from_dict(config.to_dict())  # a copy: the caller's Config is not changed
    elif isinstance(config, dict):
        cfg = config_from_dict(config)
    elif config is not None:
        cfg = load_config(config)
    else:
        cfg = Config()
    if data is not None:
        cfg.data.source = str(data)
    apply_keywords(cfg, kwargs, caller)
    apply_overrides(cfg, overrides or [])
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Refuse unknown choices and values out of range, and an unknown model, before any data is read.

    Imports no torch: registered names are read from the registering modules' source (cnnlab.registry).
    """
    for f in fields():
        section, _, key = f.path.rpartition(".")
        holder = getattr(cfg, section) if section else cfg
        setattr(holder, key, check_value(f, getattr(holder, key)))
    check_model_name(cfg.model.name)
    t = cfg.transfer
    if t.strategy != "none" and not (cfg.model.weights or cfg.model.pretrained):
        raise CnnlabError(f"--strategy {t.strategy} transfers pretrained weights: pass --weights FILE (a local "
                          "checkpoint) or --pretrained (timm models, online)")
    if t.head == "logreg" and t.strategy not in ("feature-extract", "auto"):
        raise CnnlabError("--head logreg fits scikit-learn on cached features: use it with --strategy "
                          "feature-extract")


def check_model_name(name: str) -> None:
    """A registered model, a timm:<name> (checked when timm is imported) or an existing layer-spec file."""
    if name.startswith("timm:"):
        return
    if name.endswith((".yaml", ".yml", ".txt")):
        if not Path(name).is_file():
            raise CnnlabError(f"layer-spec file not found: {name}")
        return
    try:
        MODELS.check(name)
    except CnnlabError as e:  # the zoo's names; timm's thousand are not listed without importing timm
        raise CnnlabError(f"{e}; or any timm model as timm:NAME (list them: cnnlab models --timm '*{name[:4]}*')") \
            from None
