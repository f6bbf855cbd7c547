"""What a search leaves in DIR: tune.json (every trial), best.yaml (a config `cnnlab train --config` takes), the
top-trials table, Optuna's parameter importances, and optimization-history / parallel-coordinate PNGs."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import yaml
from optuna.trial import FrozenTrial, TrialState

from cnnlab.runs import RunDir
from cnnlab.tune.search import read_settings
from cnnlab.tune.study import open_storage, quiet_optuna

TUNE_JSON, BEST_YAML, HISTORY_PNG, PARALLEL_PNG = "tune.json", "best.yaml", "history.png", "parallel.png"
TRIAL_ONLY = ("nan_policy", "checks")  # train keys a trial sets for itself: stop on a NaN, skip the cheap checks
MIN_FOR_IMPORTANCE = 4


def load(out: Path, storage: str | None) -> Any:
    import optuna

    quiet_optuna()
    s = read_settings(out)
    return optuna.load_study(study_name=s["study"], storage=open_storage(storage, out))


def trial_record(t: FrozenTrial) -> dict[str, Any]:
    return {"number": t.number, "state": t.state.name, "value": t.value, "params": t.params,
            "epochs": t.user_attrs.get("epochs"), "run": t.user_attrs.get("run"),
            "reason": t.user_attrs.get("fail_reason"), "resumed": t.user_attrs.get("resumed", 0),
            "seconds": round((t.datetime_complete - t.datetime_start).total_seconds(), 3)
            if t.datetime_complete and t.datetime_start else None}


def ranked(trials: list[FrozenTrial], maximize: bool) -> list[FrozenTrial]:
    """Complete trials best first, then pruned (by their last value), then failed and running ones."""
    def key(t: FrozenTrial) -> tuple[int, float]:
        order = {TrialState.COMPLETE: 0, TrialState.PRUNED: 1}.get(t.state, 2)
        v = t.value if t.value is not None and math.isfinite(t.value) else -math.inf if maximize else math.inf
        return order, -v if maximize else v

    return sorted(trials, key=key)


def write_best(out: Path, best: FrozenTrial) -> Path:
    """The best trial's config.yaml as a config to train from: its record keys dropped, no run folder."""
    run = RunDir.open(out / best.user_attrs["run"])
    data = {k: v for k, v in run.read_raw_config().items() if k not in ("meta", "resolved")}
    data["out"] = None
    data["verbose"] = 1
    base = (read_settings(out).get("base") or {}).get("train") or {}
    for key in TRIAL_ONLY:  # set for the trials (cnnlab.tune.trial); best.yaml trains as the base config asked
        if key in base:
            data["train"][key] = base[key]
        else:
            data["train"].pop(key, None)
    path = out / BEST_YAML
    head = f"# cnnlab tune: trial {best.number} (value {best.value:.6g}); cnnlab train --config {path}\n"
    path.write_text(head + yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def differing(trials: list[FrozenTrial]) -> list[str]:
    """The parameters whose values differ among these trials (in the order of the space)."""
    keys: list[str] = []
    for t in trials:
        keys += [k for k in t.params if k not in keys]
    return [k for k in keys if len({repr(t.params.get(k)) for t in trials}) > 1]


def print_table(rows: list[FrozenTrial], monitor: str, console: Any, top: int = 10) -> None:
    """The top trials: one value each (the best epoch's of a complete trial, the last reported epoch's of a pruned
    one, as Optuna records them). On a terminal a rich table; in a log (not a terminal) plain columns with every
    value in full, since rich would cut them to the 80 columns it assumes there."""
    from rich.table import Table

    shown = rows[:top]
    keys = differing(shown) or differing(rows)
    full = not console.is_terminal
    header = ["#", monitor, "state", "ep", *short_names(keys)]
    body = [[str(t.number), f"{t.value:.4f}" if t.value is not None else "-", t.state.name.lower(),
             str(t.user_attrs.get("epochs", "-")), *(format_param(t.params.get(k), full) for k in keys)]
            for t in shown]
    title = (f"top {len(shown)} of {len(rows)} trials ({monitor} on val: the best epoch's; a pruned trial's: its "
             "last reported epoch's)")
    if full:
        widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
        console.print(title, markup=False, soft_wrap=True)
        for r in [header, *body]:
            console.print("  ".join(c.rjust(w) if i != 2 else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))),
                          markup=False, soft_wrap=True)
        return
    table = Table(title=title)
    for name in header:
        table.add_column(name, justify="right" if name != "state" else "left", no_wrap=True)
    for r in body:
        table.add_row(*r)
    console.print(table)


def short_names(keys: list[str]) -> list[str]:
    """`train.lr` -> `lr` where the last part names one key only."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return [s if last.count(s) == 1 else k for k, s in zip(keys, last)]


def format_param(v: Any, full: bool = False) -> str:
    """A searched value: 3 significant digits in a terminal's table, 6 (and never cut) in a log."""
    if isinstance(v, float):
        return f"{v:.6g}" if full else f"{v:.3g}"
    return "-" if v is None else str(v)


def importances(study: Any, complete: int) -> dict[str, float] | str:
    """Optuna's fANOVA importances, or why there are none."""
    if complete < MIN_FOR_IMPORTANCE:
        return f"needs at least {MIN_FOR_IMPORTANCE} complete trials ({complete} so far)"
    try:
        import optuna

        return {k: round(float(v), 4) for k, v in optuna.importance.get_param_importances(study).items()}
    except Exception as e:  # too few distinct values, one parameter only, ...
        return f"not computed: {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"


def plots(study: Any, out: Path, monitor: str = "objective") -> list[str]:
    """history.png and parallel.png (optuna.visualization.matplotlib, Agg); what could not be drawn is said."""
    from cnnlab.plotting import pyplot, save

    pyplot()  # the Agg backend, before optuna's plots import pyplot
    from optuna.visualization import matplotlib as ovm

    notes = []
    for name, draw in ((HISTORY_PNG, ovm.plot_optimization_history), (PARALLEL_PNG, ovm.plot_parallel_coordinate)):
        try:
            ax = draw(study)
            first = ax.flat[0] if hasattr(ax, "flat") else ax
            if name == HISTORY_PNG:
                first.set_ylabel(f"{monitor} (val)")
            fig = first.figure
            fig.set_size_inches(10, 5.5)
            fig.tight_layout()
            save(fig, out / name, dpi=110, tight=False)
        except Exception as e:
            notes.append(f"{name} not drawn: {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}")
    return notes


def summarize(out: Path, storage: str | None, console: Any) -> dict[str, Any]:
    """tune.json, best.yaml, the table, importances and plots of the study in DIR."""
    study = load(out, storage)
    s = read_settings(out)
    maximize = s["direction"] == "maximize"
    trials = [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get("surplus")]
    rows = ranked(trials, maximize)
    complete = [t for t in rows if t.state == TrialState.COMPLETE]
    monitor = monitor_name(out, complete)
    summary: dict[str, Any] = {"study": s["study"], "storage": s["storage"] if s["storage"] != "study.journal"
                               else None, "direction": s["direction"], "monitor": monitor,
                               "counts": {st.name: sum(t.state == st for t in trials) for st in TrialState}}
    if complete:
        summary["best"] = {"number": complete[0].number, "value": complete[0].value, "params": complete[0].params,
                           "run": complete[0].user_attrs.get("run"),
                           "config": str(write_best(out, complete[0]))}
        print_table(rows, monitor, console)
    summary["importances"] = importances(study, len(complete))
    summary["notes"] = plots(study, out, monitor) if complete else ["no complete trial: no plots"]
    summary["trials"] = [trial_record(t) for t in sorted(trials, key=lambda t: t.number)]
    (out / TUNE_JSON).write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
    print_footer(summary, out, console)
    return summary


def monitor_name(out: Path, complete: list[FrozenTrial]) -> str:
    if not complete:
        return "value"
    run = RunDir(out / complete[0].user_attrs["run"])
    return (run.read_raw_config().get("callbacks") or {}).get("monitor", "value")


def print_footer(summary: dict[str, Any], out: Path, console: Any) -> None:
    counts = ", ".join(f"{n} {k.lower()}" for k, n in summary["counts"].items() if n)
    console.print(f"trials: {counts or 'none'}", markup=False)
    imp = summary["importances"]
    if isinstance(imp, dict):
        console.print("importances: " + ", ".join(f"{k} {v:.2f}" for k, v in imp.items()), markup=False)
    else:
        console.print(f"importances: {imp}", markup=False)
    for note in summary["notes"]:
        console.print(note, markup=False)
    if "best" in summary:
        b = summary["best"]
        console.print(f"best: trial {b['number']} ({summary['monitor']} {b['value']:.4f}); cnnlab train --config "
                      f"{b['config']}", markup=False, soft_wrap=True)
    where = summary.get("storage") or str(out / "study.journal")
    console.print(f"results: {out / TUNE_JSON}; dashboard: optuna-dashboard {where}", markup=False, soft_wrap=True)
