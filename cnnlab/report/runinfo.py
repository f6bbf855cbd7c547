"""What a run folder says about its run, for the report's first section: every name comes from RunDir."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from cnnlab.runs import RunDir
from cnnlab.train.faults import EventLog


@dataclass
class RunInfo:
    config: dict[str, Any]  # the resolved config, without meta / resolved
    meta: dict[str, Any]
    resolved: dict[str, Any]
    classes: list[str]
    summary: str
    history: list[dict[str, Any]]  # metrics.csv, one row per epoch
    metrics: dict[str, Any]  # metrics.json
    transfer: dict[str, Any] | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def config_yaml(self) -> str:
        return yaml.safe_dump(self.config, sort_keys=False, default_flow_style=None, width=110)

    @property
    def best_epoch(self) -> int | None:
        return (self.metrics.get("best") or {}).get("epoch")


def read_lines(run: RunDir, name: str) -> list[str]:
    path = run.file(name)
    return path.read_text(encoding="utf-8", errors="replace").splitlines() if path.is_file() else []


def read_run_info(run: RunDir) -> RunInfo:
    raw = run.read_raw_config()
    meta, resolved = raw.pop("meta", {}) or {}, raw.pop("resolved", {}) or {}
    summary = "\n".join(read_lines(run, run.SUMMARY))
    skipped = [tuple(line.split("\t", 1)) if "\t" in line else (line, "") for line in read_lines(run, run.SKIPPED)]
    events = EventLog(run.file(run.EVENTS)).read()
    transfer = run.read_json(run.TRANSFER) if run.file(run.TRANSFER).is_file() else None
    return RunInfo(raw, meta, resolved, run.read_classes(), summary, run.read_history(), run.read_metrics(),
                   transfer, skipped, events)
