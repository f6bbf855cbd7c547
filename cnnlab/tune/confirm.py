"""`cnnlab tune ... --confirm K`: the top K configurations of the search trained again with other seeds (and, with
`--confirm-strategy fine-tune`, with the full model instead of a head on cached features), so the winner is judged
against seed noise. Runs: DIR/confirm/NNNN-seedS (normal run folders; a rerun keeps finished ones and resumes a
killed one). Results: DIR/confirm.json, and DIR/confirmed.yaml (the winner on the mean over seeds).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import yaml

from cnnlab.config import build_config
from cnnlab.runs import RunDir
from cnnlab.tune.search import read_settings
from cnnlab.tune.space import trial_config

CONFIRM, CONFIRM_JSON, CONFIRMED_YAML = "confirm", "confirm.json", "confirmed.yaml"


def confirm_run(cfg: Any, folder: Path) -> dict[str, Any]:
    from cnnlab.api import fit, resume

    run = RunDir(folder)
    if run.is_finished():
        metrics = run.read_metrics()
    elif (folder / RunDir.CONFIG).is_file():
        metrics = resume(folder).metrics
    else:
        metrics = fit(config=cfg).metrics
    return metrics


def confirm(out: Path, summary: dict[str, Any], k: int, seeds: int, strategy: str, console: Any) -> dict[str, Any]:
    """Train the top k complete trials with `seeds` other seeds; the winner on the mean over seeds."""
    s = read_settings(out)
    base = build_config(config=s["base"], caller="cnnlab tune")
    maximize = s["direction"] == "maximize"
    top = sorted((t for t in summary["trials"] if t["state"] == "COMPLETE"), key=lambda t: t["value"],
                 reverse=maximize)[:k]
    rows = []
    for t in top:
        values = []
        for seed in range(base.train.seed + 1, base.train.seed + 1 + seeds):
            cfg = trial_config(base, {**t["params"], "train.seed": seed,
                                      **({"transfer.strategy": "fine-tune"} if strategy == "fine-tune" else {})})
            folder = out / CONFIRM / f"{t['number']:04d}-seed{seed}"
            cfg.out, cfg.verbose = str(folder), 0
            metrics = confirm_run(cfg, folder)
            values.append((metrics.get("best") or {}).get(metrics.get("monitor")))
            console.print(f"confirm trial {t['number']} seed {seed}: {summary['monitor']} {values[-1]:.4f}",
                          markup=False)
        rows.append({"number": t["number"], "search_value": t["value"], "values": values,
                     "mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0})
    result = {"strategy": strategy, "seeds": seeds, "rows": rows}
    if rows:
        winner = (max if maximize else min)(rows, key=lambda r: r["mean"])
        result["winner"] = winner["number"]
        write_confirmed(out, winner["number"], base.train.seed + 1)
    (out / CONFIRM_JSON).write_text(json.dumps(result, indent=2), encoding="utf-8")
    print_confirm(result, summary["monitor"], console, out)
    return result


def write_confirmed(out: Path, number: int, seed: int) -> None:
    run = RunDir(out / CONFIRM / f"{number:04d}-seed{seed}")
    data = {k: v for k, v in run.read_raw_config().items() if k not in ("meta", "resolved")}
    data["out"], data["verbose"] = None, 1
    (out / CONFIRMED_YAML).write_text(f"# cnnlab tune --confirm: trial {number}, best on the mean over seeds\n"
                                      + yaml.safe_dump(data, sort_keys=False), encoding="utf-8")


def print_confirm(result: dict[str, Any], monitor: str, console: Any, out: Path) -> None:
    from rich.table import Table

    table = Table(title=f"confirmed with {result['seeds']} other seeds ({result['strategy']})")
    for name in ("trial", "search", f"mean {monitor}", "std", "per seed", ""):
        table.add_column(name, justify="right", no_wrap=True)
    for r in result["rows"]:
        table.add_row(str(r["number"]), f"{r['search_value']:.4f}", f"{r['mean']:.4f}", f"{r['std']:.4f}",
                      " ".join(f"{v:.3f}" for v in r["values"]), "winner" if r["number"] == result.get("winner")
                      else "")
    console.print(table)
    if "winner" in result:
        console.print(f"winner: trial {result['winner']}; cnnlab train --config {out / CONFIRMED_YAML}",
                      markup=False, soft_wrap=True)
