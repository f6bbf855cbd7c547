"""`cnnlab compare RUN...`: any run folders (tune trials or not) side by side: the config keys that differ, the
headline metrics, and which run is best on the monitored metric. Runs are ranked only when they were validated on
the same data and the same val split (the split's sample ids and labels, recomputed from each config); otherwise
the comparison is refused with what differs."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

from cnnlab.errors import CnnlabError
from cnnlab.runs import RunDir
from cnnlab.train.callbacks import resolve_mode

IGNORED = ("meta", "resolved", "out", "verbose")
HEADLINE = ("accuracy", "balanced_accuracy", "roc_auc", "loss")


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in data.items():
        if not prefix and k in IGNORED:
            continue
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def val_identity(raw: dict[str, Any]) -> tuple[Any, ...]:
    """What the run was validated on: the data source, and a fingerprint of its val split's ids and labels."""
    d, seed = raw.get("data") or {}, (raw.get("train") or {}).get("seed", 0)
    counts = (raw.get("resolved") or {}).get("counts")
    split = "test" if d.get("val_source") == "test" else "val"
    try:
        from cnnlab.data.readers import load_source

        src = load_source(d["source"], val_split=d.get("val_split", 0.2), seed=seed, images=d.get("images"),
                          id_col=d.get("id_col"), label_col=d.get("label_col"),
                          skip_missing=bool(d.get("skip_missing")))
        part = src.splits.get(split)
        digest = hashlib.sha1(repr((part.ids, part.labels.tolist())).encode()).hexdigest()[:12] if part else None
    except (CnnlabError, OSError, KeyError):  # the data is gone: compare what the configs say
        digest = f"split {d.get('val_split')} seed {seed}"
    return str(d.get("source")), split, digest, repr(counts)


def headline(run: RunDir) -> dict[str, Any]:
    m = run.read_metrics()
    val = {k: v for k, v in (m.get("val") or {}).items() if k in HEADLINE}
    monitor = m.get("monitor")
    best = (m.get("best") or {}).get(monitor) if monitor else None
    return {"monitor": monitor, "value": best, "val": val, "epochs": m.get("epochs_run"),
            "time": m.get("train_time_s"), "test": {k: v for k, v in (m.get("test") or {}).items() if k in HEADLINE}}


def compare(paths: list[str]) -> dict[str, Any]:
    """The comparison of the runs: differing keys, metrics, the best run (refused when val data differ)."""
    if len(paths) < 2:
        raise CnnlabError("cnnlab compare needs at least two run folders")
    runs = [RunDir.open(p) for p in paths]
    raws = [r.read_raw_config() for r in runs]
    ids = [val_identity(raw) for raw in raws]
    if len(set(ids)) > 1:
        what = "data differ" if len({i[0] for i in ids}) > 1 else "val splits differ"
        groups = {i: [str(r.path) for r, j in zip(runs, ids) if j == i] for i in dict.fromkeys(ids)}
        detail = "; ".join(f"{', '.join(p)}: {i[0]} ({i[1]} {i[2]})" for i, p in groups.items())
        raise CnnlabError(f"cannot rank these runs: their {what} ({detail}); compare runs validated on "
                          "the same data and val split")
    flat = [flatten(raw) for raw in raws]
    keys = sorted({k for f in flat for k in f if len({repr(g.get(k)) for g in flat}) > 1})
    metrics = [headline(r) for r in runs]
    monitors = {m["monitor"] for m in metrics}
    monitor = monitors.pop() if len(monitors) == 1 else None
    if monitor is None:  # runs that watched different metrics are ranked on val accuracy
        monitor = "val_accuracy"
        for m in metrics:
            m["value"] = m["val"].get("accuracy")
    scored = [i for i, m in enumerate(metrics) if m["value"] is not None and math.isfinite(m["value"])]
    pick = max if resolve_mode(monitor, "auto") == "max" else min
    best = pick(scored, key=lambda i: metrics[i]["value"]) if scored else None
    rows = [{"run": str(r.path), "config": {k: f.get(k) for k in keys}, **m} for r, f, m in zip(runs, flat, metrics)]
    return {"monitor": monitor, "keys": keys, "rows": rows, "best": best, "data": ids[0][0]}


def print_comparison(result: dict[str, Any], console: Any) -> None:
    from rich import box
    from rich.table import Table

    from cnnlab.tune.results import format_param, short_names

    rows, keys = result["rows"], result["keys"]
    val_keys = [k for k in HEADLINE if any(k in r["val"] for r in rows) and f"val_{k}" != result["monitor"]
                and (k != "balanced_accuracy" or result["monitor"] != "val_accuracy")]
    table = Table(title=f"{len(rows)} runs on {result['data']} (best on {result['monitor']})", box=box.SIMPLE_HEAD,
                  collapse_padding=True, pad_edge=False)
    names = [short_path(r["run"]) for r in rows]
    for name in ("run", "", result["monitor"], *(f"val_{k}" for k in val_keys), "ep", *short_names(keys)):
        table.add_column(name, justify="left" if name in ("run", "") else "right", no_wrap=True,
                         min_width=max(map(len, names)) if name == "run" else max(len(name), 4))
    for i, r in enumerate(rows):
        value = f"{r['value']:.4f}" if r["value"] is not None else "-"
        cells = [f"{r['val'][k]:.4f}" if k in r["val"] else "-" for k in val_keys]
        table.add_row(names[i], "best" if i == result["best"] else "", value, *cells, str(r["epochs"] or "-"),
                      *(format_param(r["config"][k]) for k in keys))
    console.print(table)
    if not keys:
        console.print("the runs have the same config (they differ only in their randomness)", markup=False)


def short_path(path: str) -> str:
    p = Path(path)
    return str(Path(p.parent.name) / p.name) if p.parent.name else p.name
