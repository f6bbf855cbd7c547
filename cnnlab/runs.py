"""The run folder: every file name of a run, and creating, refusing, reading, writing and repairing them.

    runs/<time>-<model>/
      config.yaml            the resolved config, plus `meta` (versions, command) and `resolved` (counts, label column)
      classes.json           class names in label order
      summary.txt            the model summary
      metrics.csv            one row per epoch (CSVLogger)          metrics.json   final, best, val / test metrics
      best.safetensors       best weights on the monitored metric   last.safetensors   weights of the last checkpoint
      last_state.pt          the full training state (resume)       events.jsonl   faults, rollbacks, resumes
      skipped.txt            files that could not be used           preprocess.safetensors   a fitted zca / pca map
      transfer.json          the transfer strategy and its record   tensorboard/   TensorBoard events
      report/, export/       written by `cnnlab report` and `cnnlab export`

A new run folder must be new or empty; nothing in it is overwritten. Folders written by earlier versions of cnnlab
load the same way: the names have not changed.
"""

from __future__ import annotations

import csv
import json
import os
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from cnnlab.config import Config, config_from_dict, config_to_yaml
from cnnlab.errors import CnnlabError


class RunDir:
    """One run folder. Lower layers get paths from it (the checkpointer, the callbacks); none names a file."""

    CONFIG = "config.yaml"
    CLASSES = "classes.json"
    SUMMARY = "summary.txt"
    METRICS_CSV = "metrics.csv"
    METRICS = "metrics.json"
    BEST = "best.safetensors"
    LAST = "last.safetensors"
    STATE = "last_state.pt"
    EVENTS = "events.jsonl"
    SKIPPED = "skipped.txt"
    PREPROCESS = "preprocess.safetensors"
    TRANSFER = "transfer.json"
    TENSORBOARD = "tensorboard"
    REPORT = "report"
    REPORT_PAGE = "index.html"  # report/index.html, beside its images (cnnlab.report)
    EXPORT = "export"
    EXPORT_SPEC = "model.json"  # export/model.json: what the exported graph takes and returns (cnnlab.export)
    LR_FIND, LR_FIND_PLOT = "lr_find.json", "lr_find.png"  # the sweep of `cnnlab train --lr find`
    # what training writes as it goes: a resume without a checkpoint removes them, a killed save leaves temporaries
    TRAINING_OUTPUTS = (STATE, LAST, BEST, METRICS_CSV, METRICS)

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __str__(self) -> str:
        return str(self.path)

    def __fspath__(self) -> str:
        return str(self.path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    # -- creating and opening --------------------------------------------------------------------------------
    @classmethod
    def create(cls, out: str | Path | None, model_name: str) -> RunDir:
        """A new, empty run folder. An existing folder holding a run or other files is refused, never overwritten."""
        path = Path(out) if out else default_path(model_name)
        if path.exists():
            if not path.is_dir():
                raise CnnlabError(f"--out {path} is a file; choose a folder path")
            if (path / cls.CONFIG).exists():
                raise CnnlabError(f"{path} already holds a run; choose another --out, or continue it with "
                                  f"`cnnlab train --resume {path}`")
            if any(path.iterdir()):
                raise CnnlabError(f"{path} is not empty; choose another --out so nothing in it is overwritten")
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CnnlabError(f"cannot create the run folder {path}: {e.strerror}") from None
        return cls(path)

    @classmethod
    def open(cls, path: str | Path) -> RunDir:
        """An existing run folder; anything else is refused with what to pass instead."""
        run = cls(path)
        if not (run.path / cls.CONFIG).is_file():
            raise CnnlabError(f"{run.path} is not a cnnlab run folder (no config.yaml); pass the folder "
                              "`cnnlab train` printed")
        return run

    def remove_if_empty(self) -> None:
        """After a failed start: leave no empty folder behind."""
        if self.path.is_dir() and not any(self.path.iterdir()):
            self.path.rmdir()

    # -- paths -----------------------------------------------------------------------------------------------
    def file(self, name: str) -> Path:
        return self.path / name

    def weights(self, which: str = "best") -> Path:
        """best.safetensors (or last), falling back to the last checkpoint's weights."""
        for path in (self.file(f"{which}.safetensors"), self.file(self.LAST)):
            if path.is_file():
                return path
        raise CnnlabError(f"{self.path} has no weights ({which}.safetensors or {self.LAST})")

    def artifact_dir(self, kind: str) -> Path:
        """A folder for what a later command adds to the run (report/, export/), created when missing."""
        path = self.file(kind)
        path.mkdir(parents=True, exist_ok=True)
        return path

    # -- writing ---------------------------------------------------------------------------------------------
    def write_start(self, cfg: Config, *, meta: dict[str, Any], resolved: dict[str, Any], classes: list[str],
                    summary: str, skipped: list[tuple[str, str]], whitening: dict | None) -> None:
        """What a run writes before its first step: config.yaml, classes, summary, skipped files, whitening."""
        self.file(self.CONFIG).write_text(config_to_yaml(cfg, {"meta": meta, "resolved": resolved}),
                                          encoding="utf-8")
        self.write_json(self.CLASSES, classes)
        self.file(self.SUMMARY).write_text(summary + "\n", encoding="utf-8")
        if skipped:
            lines = [f"{name}\t{reason}" for name, reason in skipped]
            self.file(self.SKIPPED).write_text("\n".join(lines) + "\n", encoding="utf-8")
        if whitening is not None:
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in whitening.items()}, str(self.file(self.PREPROCESS)))

    def write_json(self, name: str, data: Any) -> None:
        self.file(name).write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")

    # -- reading ---------------------------------------------------------------------------------------------
    def read_raw_config(self) -> dict[str, Any]:
        try:
            return yaml.safe_load(self.file(self.CONFIG).read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise CnnlabError(f"{self.file(self.CONFIG)} is not valid YAML: {str(e).splitlines()[0]}") from None

    def read_config(self) -> Config:
        """The run's resolved config (config.yaml, read with yaml.safe_load)."""
        return config_from_dict(self.read_raw_config())

    def read_meta(self) -> dict[str, Any]:
        return self.read_raw_config().get("meta", {})

    def label_col(self) -> str | None:
        """The label column of the training CSV, which a predictions CSV reuses."""
        return (self.read_raw_config().get("resolved") or {}).get("label_col")

    def read_classes(self) -> list[str]:
        return self.read_json(self.CLASSES)

    def read_json(self, name: str, default: Any = None) -> Any:
        path = self.file(name)
        if not path.is_file():
            if default is not None:
                return default
            raise CnnlabError(f"{self.path} has no {name}: the run folder is incomplete")
        return json.loads(path.read_text(encoding="utf-8"))

    def read_metrics(self) -> dict[str, Any]:
        return self.read_json(self.METRICS, default={})

    def read_history(self) -> list[dict[str, Any]]:
        """The per-epoch logs of metrics.csv as training returned them: epoch an int, numbers as floats, empty
        cells left out (text that is no number stays text)."""
        path = self.file(self.METRICS_CSV)
        if not path.is_file():
            return []
        with open(path, newline="", encoding="utf-8") as f:
            return [{k: _cell(k, v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]

    def read_whitening(self) -> dict | None:
        """The fitted zca / pca map saved with the run, or None."""
        path = self.file(self.PREPROCESS)
        if not path.is_file():
            return None
        from safetensors.torch import load_file

        return load_file(str(path))

    def is_finished(self) -> bool:
        return self.file(self.METRICS).is_file()

    # -- repair before a resume ------------------------------------------------------------------------------
    def remove_stale_temporaries(self) -> list[str]:
        """Delete the temporary files of a save that was killed half-way (`.<output>.<random>.tmp`)."""
        removed = []
        for path in self.path.iterdir():
            name = path.name
            if name.startswith(".") and name.endswith(".tmp") and any(name.startswith(f".{o}.")
                                                                      for o in self.TRAINING_OUTPUTS):
                path.unlink(missing_ok=True)
                removed.append(name)
        return removed

    def repair(self, completed: int | None) -> None:
        """Drop what the run wrote after its checkpoint: metrics.csv rows past `completed` epochs (all of them and
        the run's own outputs when there is no checkpoint, `completed` None), so they are written once, again."""
        if completed is None:
            for name in self.TRAINING_OUTPUTS:
                self.file(name).unlink(missing_ok=True)
            for path in self.file(self.TENSORBOARD).glob("events.out.tfevents.*"):
                path.unlink()
            return
        truncate_csv(self.file(self.METRICS_CSV), completed)


def default_path(model_name: str) -> Path:
    """runs/<time>-<model>, with -2, -3, ... when that exists."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(model_name).stem if model_name.endswith(".yaml") else model_name)
    base = Path("runs") / f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-{stem}"
    path, n = base, 2
    while path.exists():
        path, n = Path(f"{base}-{n}"), n + 1
    return path


def truncate_csv(path: Path, completed: int) -> None:
    """Keep the header and the rows of epochs 1..completed."""
    if not path.is_file():
        return
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if not rows:
        return
    kept = [rows[0]] + [r for r in rows[1:] if r and r[0].isdigit() and int(r[0]) <= completed]
    if len(kept) == len(rows):
        return
    tmp = path.with_name(f".{path.name}.resume.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(kept)
    os.replace(tmp, path)


def _cell(key: str, text: str) -> Any:
    try:
        value = float(text)
    except ValueError:
        return text
    return int(value) if key == "epoch" else value
