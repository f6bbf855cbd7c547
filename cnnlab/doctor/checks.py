"""The verdict of one check (`Check`) and of the whole doctor run (`DoctorReport`), with its table and JSON."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

OK, WARN, FAIL = "ok", "warn", "fail"


@dataclass
class Check:
    """One learning-process check: ok / warn / fail, what was measured, what is expected, and what to do."""

    name: str
    status: str
    value: str
    expected: str
    advice: str = ""


@dataclass
class DoctorReport:
    checks: list[Check] = field(default_factory=list)
    out: Path | None = None
    details: dict[str, Any] = field(default_factory=dict)  # per-layer numbers and curves behind the checks
    listener: Callable[[Check], None] | None = None  # told of each check as it is added (the rows as they come)

    def add(self, *checks: Check) -> None:
        self.checks.extend(checks)
        for c in checks:
            if self.listener is not None:
                self.listener(c)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.status == FAIL]

    @property
    def warnings(self) -> list[Check]:
        return [c for c in self.checks if c.status == WARN]

    def get(self, name: str) -> Check:
        """The check called `name` (KeyError if it did not run)."""
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(name)

    def status(self, name: str) -> str:
        return self.get(name).status

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def to_json(self) -> str:
        return json.dumps([asdict(c) for c in self.checks], indent=2)

    def write(self, folder: Path) -> Path:
        path = folder / "doctor.json"
        path.write_text(self.to_json() + "\n", encoding="utf-8")
        return path


STYLE = {OK: "green", WARN: "yellow", FAIL: "bold red"}


def format_row(c: Check) -> str:
    """One check on one line, as it is done: status, name, what was measured, and what to do when not ok."""
    line = f"{c.status:>4}  {c.name}: {c.value}"
    return line + (f" -> {c.advice}" if c.advice and c.status != OK else "")


def print_report(report: DoctorReport, console) -> None:
    """The table: check, status, measured, expected, what to do."""
    from rich.table import Table

    table = Table(show_lines=False)
    for col in ("check", "status", "measured", "expected", "what to do"):
        table.add_column(col, overflow="fold")
    for c in report.checks:
        table.add_row(c.name, f"[{STYLE[c.status]}]{c.status}[/]", c.value, c.expected, c.advice or "-")
    console.print(table)
    n_fail, n_warn = len(report.failed), len(report.warnings)
    verdict = "all ok" if not n_fail and not n_warn else f"{n_fail} failed, {n_warn} warnings"
    where = f"; doctor.json and plots in {report.out}" if report.out is not None else ""
    console.print(f"doctor: {len(report.checks)} checks, {verdict}{where}", soft_wrap=True)
