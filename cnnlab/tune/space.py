"""The search space of `cnnlab tune`: a YAML mapping keyed by config names, checked before any trial runs.

    train.lr: {loguniform: [1e-4, 1e-1]}
    train.weight_decay: {loguniform: [1e-6, 1e-2]}
    model.kwargs.dropout: {uniform: [0.0, 0.5]}
    train.batch_size: {choice: [32, 64, 128]}
    model.name: {choice: [seed_cnn, resnet20]}
    model.kwargs.width: {int: [8, 32], step: 8}      # int: [lo, hi], optional step / log
    train.schedule: {grid: [onecycle, cosine]}        # grid: the values of --sampler grid (choice elsewhere)

A key is any config field (`section.key`) or a model option (`model.kwargs.NAME`, passed to the model's
constructor: a name the model does not take fails that trial, not the search). Imports neither torch nor optuna.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from cnnlab.config import Config, build_config, read_yaml, set_value, validate
from cnnlab.errors import CnnlabError

KINDS = ("loguniform", "uniform", "int", "choice", "grid")
MODEL_KWARGS = "model.kwargs."

# The notes: the learning rate and its decay schedule, the update rule, the regularization (L2, dropout), the
# network's size. A model's own options are searched only for the models known to take them.
SCRATCH_SPACE: dict[str, Any] = {
    "train.lr": {"loguniform": [1e-4, 3e-2]},
    "train.weight_decay": {"loguniform": [1e-6, 1e-2]},
    "train.optimizer": {"choice": ["adam", "adamw", "sgd"]},
    "train.schedule": {"choice": ["onecycle", "cosine", "step"]},
}
MODEL_SPACES: dict[str, dict[str, Any]] = {
    "seed_cnn": {"model.kwargs.width": {"choice": [8, 16, 32]}, "model.kwargs.hidden": {"choice": [64, 128, 256]},
                 "model.kwargs.dropout": {"uniform": [0.0, 0.5]}},
    "mlp": {"model.kwargs.dropout": {"uniform": [0.0, 0.5]}},
}
HEAD_SPACE: dict[str, Any] = {  # feature-extract: only the head trains
    "train.lr": {"loguniform": [1e-4, 1e-1]},
    "train.weight_decay": {"loguniform": [1e-6, 1e-2]},
    "transfer.head": {"choice": ["linear", "mlp"]},
    "transfer.head_hidden": {"choice": [128, 256, 512]},
    "transfer.head_dropout": {"uniform": [0.0, 0.5]},
}
FINE_TUNE_SPACE: dict[str, Any] = {
    "train.lr": {"loguniform": [1e-4, 1e-2]},
    "train.weight_decay": {"loguniform": [1e-6, 1e-2]},
    "transfer.unfreeze": {"int": [1, 6]},
    "transfer.lr_decay": {"uniform": [0.5, 1.0]},
    "transfer.head_dropout": {"uniform": [0.0, 0.5]},
}


@dataclass(frozen=True)
class Param:
    """One searched config key: its kind and its bounds or values."""

    key: str
    kind: str
    low: Any = None
    high: Any = None
    values: tuple[Any, ...] = ()
    step: int | None = None
    log: bool = False

    def describe(self) -> str:
        if self.kind in ("choice", "grid"):
            return f"{self.kind} {list(self.values)}"
        return f"{self.kind} [{self.low}, {self.high}]" + (f" step {self.step}" if self.step else "")


def default_space(cfg: Config) -> dict[str, Any]:
    """The space searched when --space is not given: scratch, feature-extract or fine-tune."""
    strategy = cfg.transfer.strategy
    if strategy == "feature-extract":
        return dict(HEAD_SPACE)
    if strategy in ("fine-tune", "full", "auto"):
        return dict(FINE_TUNE_SPACE)
    return {**SCRATCH_SPACE, **MODEL_SPACES.get(cfg.model.name, {})}


def load_space(path: str | None, cfg: Config) -> tuple[dict[str, Any], list[Param]]:
    """The space of a YAML file (or the default one) as written and parsed, checked against the config table."""
    raw = read_yaml(path) if path else default_space(cfg)
    return raw, parse_space(raw, cfg, path or "the default space")


def parse_space(raw: dict[str, Any], cfg: Config, where: str) -> list[Param]:
    if not raw:
        raise CnnlabError(f"{where} is empty: give at least one key, e.g. train.lr: {{loguniform: [1e-4, 1e-1]}}")
    params = [parse_param(str(key), spec, where) for key, spec in raw.items()]
    for p in params:
        check_values(p, cfg, where)
    return params


def parse_param(key: str, spec: Any, where: str) -> Param:
    """`{loguniform: [lo, hi]}` and the others -> Param; a malformed entry is one line naming it."""
    if not isinstance(spec, dict) or not (set(spec) & set(KINDS)):
        raise CnnlabError(f"{where}: {key} needs one of {', '.join(KINDS)}, e.g. {key}: {{uniform: [0.0, 0.5]}}")
    kinds = [k for k in spec if k in KINDS]
    extra = sorted(set(spec) - set(KINDS) - {"step", "log"})
    if len(kinds) > 1 or extra:
        raise CnnlabError(f"{where}: {key} has {', '.join(map(str, kinds[1:] + extra))} besides {kinds[0]}: give one "
                          f"of {', '.join(KINDS)} (int may add step and log)")
    kind, value = kinds[0], spec[kinds[0]]
    if kind not in ("choice", "grid") and isinstance(value, list):
        value = [as_number(v) for v in value]  # YAML 1.1 reads 1e-4 (no dot) as text
    if kind in ("choice", "grid"):
        if not isinstance(value, list) or not value:
            raise CnnlabError(f"{where}: {key}: {kind} needs a non-empty list of values")
        if not all(v is None or isinstance(v, (bool, int, float, str)) for v in value):
            raise CnnlabError(f"{where}: {key}: {kind} values must be numbers, text, true / false or null")
        return Param(key, kind, values=tuple(value))
    if not (isinstance(value, list) and len(value) == 2 and all(is_number(v) for v in value)):
        raise CnnlabError(f"{where}: {key}: {kind} needs [low, high] numbers, got {value!r}")
    low, high = value
    if not low < high:
        raise CnnlabError(f"{where}: {key}: empty range [{low}, {high}] (low must be below high)")
    if kind == "loguniform" and low <= 0:
        raise CnnlabError(f"{where}: {key}: loguniform needs positive bounds (log of {low}); use uniform")
    if kind == "int":
        if not all(float(v).is_integer() for v in value):
            raise CnnlabError(f"{where}: {key}: int needs whole-number bounds, got {value!r}")
        step, log = spec.get("step"), bool(spec.get("log", False))
        if step is not None and (not is_number(step) or step < 1 or not float(step).is_integer()):
            raise CnnlabError(f"{where}: {key}: step must be a positive whole number, got {step!r}")
        if log and low <= 0:
            raise CnnlabError(f"{where}: {key}: log needs positive bounds (log of {low})")
        return Param(key, kind, int(low), int(high), step=int(step) if step else None, log=log)
    return Param(key, kind, float(low), float(high), log=kind == "loguniform")


def as_number(v: Any) -> Any:
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return v
    return v


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_values(p: Param, cfg: Config, where: str) -> None:
    """Every bound or value must be one the config accepts for that key (unknown keys, bad choices, ranges)."""
    for value in (p.values if p.values else (p.low, p.high)):
        trial = cfg.copy()
        try:
            apply_value(trial, p.key, value)
            validate(trial)
        except CnnlabError as e:
            raise CnnlabError(f"{where}: {p.key}: {e}") from None


def apply_value(cfg: Config, key: str, value: Any) -> None:
    """Set a config field by its dotted key, or a model option (`model.kwargs.NAME`)."""
    if key.startswith(MODEL_KWARGS):
        name = key[len(MODEL_KWARGS):]
        if not name or "." in name:
            raise CnnlabError(f"unknown config key '{key}': model options are model.kwargs.NAME")
        cfg.model.kwargs = {**cfg.model.kwargs, name: value}
        return
    set_value(cfg, key, value)


def trial_config(base: Config, params: dict[str, Any]) -> Config:
    """The base config with a trial's values, validated (a bad combination is a CnnlabError)."""
    cfg = base.copy()
    for key, value in params.items():
        apply_value(cfg, key, value)
    return build_config(config=cfg, caller="cnnlab tune")


def grid_space(params: list[Param]) -> dict[str, list[Any]]:
    """The grid of --sampler grid: every key must list its values (choice or grid)."""
    ranges = [p.key for p in params if not p.values]
    if ranges:
        raise CnnlabError(f"--sampler grid needs listed values: {', '.join(ranges)} "
                          f"{'is a range' if len(ranges) == 1 else 'are ranges'}; write grid: [v1, v2, ...]")
    return {p.key: list(p.values) for p in params}
