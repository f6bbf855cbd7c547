"""Speed benchmark: cnnlab against a hand-written PyTorch loop, Keras 3 (and fastai), measured in one run.

    python benchmarks/bench_speed.py [--quick] [--repeats N] [--cases mnist,cifar] [--contenders ...]

For each case it measures (a) training throughput: images/s over timed windows after warm-up steps, median
of ``--repeats``; (b) time-to-target: wall seconds of training (evaluation excluded) until test accuracy
reaches the case's target, capped at ``max_epochs``. Every (contender, precision, measurement) runs in its own
fresh Python process, one after another, so no two measurements share the 2 cores or a thread pool. Results go
to ``benchmarks/results/<name>.json`` and ``.md``; the markdown headline is the ratio cnnlab/peer.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (  # noqa: E402
    datasets_root,
    hardware_info,
    has_native_bf16,
    load_dataset,
    median,
    time_to_target,
    write_results,
)

CASES: dict[str, dict[str, Any]] = {
    "mnist": {
        "dataset": "mnist",
        "model": "seed_cnn",
        "target": 0.99,
        "max_epochs": 10,
        "augment": False,
        "quick_epochs": 4,
        "cnnlab_epochs": 3,
        "cnnlab_ttt_epochs": "auto",  # cnnlab's default: one-cycle over ~1200 steps (3 epochs of 60k)
    },
    "cifar": {
        "dataset": "cifar10",
        "model": "resnet20",
        "target": 0.75,
        "max_epochs": 30,
        "augment": True,
        "quick_epochs": 4,
        "cnnlab_epochs": 30,
        "cnnlab_ttt_epochs": "auto",  # cnnlab's default: one-cycle over ~1200 steps (4 epochs of 50k)
    },
}
CONTENDERS = ("cnnlab:fp32", "cnnlab:bf16", "torch:fp32", "torch:bf16", "keras:fp32", "fastai:fp32")
RESULT_TAG = "BENCH_RESULT "


# ------------------------------------------------------------------------------------------- the cnnlab hook
def run_cnnlab_case(case: str, precision: str, job: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train cnnlab's ``case`` through its Python API; returns the same history keys the peers return.

    Expected API (the lead may adapt it): ``cnnlab.fit(data, model=..., epochs=..., batch_size=128,
    optimizer="adam", lr=1e-3, precision=..., seed=0, quiet=True, out=<tmpdir>)`` returning an object whose
    ``.history`` is a list of per-epoch dicts with ``time`` (training seconds, no evaluation) and
    ``val_accuracy`` (accuracy on the dataset folder's test split). ``data`` is the dataset folder.
    Raises ``_Unavailable`` when cnnlab cannot run it yet; the harness records that as "unavailable: ...".
    """
    job = job or {}
    spec = CASES[case]
    try:
        import cnnlab
    except ImportError as e:
        raise _Unavailable(f"cannot import cnnlab ({e})") from e
    if not callable(getattr(cnnlab, "fit", None)):
        raise _Unavailable("cnnlab.fit does not exist yet")
    callbacks = []
    if job.get("kind") == "throughput":
        # the peers' settings exactly, on all of train; the same timed windows of steps as the peers (after the
        # same warm-up), taken by a callback inside cnnlab's own loop (data pipeline, metrics, checks included)
        bs = job.get("batch_size", 128)
        needed = job["warmup_steps"] + job["steps"] * job["repeats"] + 1  # windows may span epoch ends
        settings = {"epochs": math.ceil(needed / math.ceil(job["n_train"] / bs)), "batch_size": bs,
                    "optimizer": "adam", "lr": 1e-3, "schedule": "constant", "val_split": 0.0}
        callbacks.append(_step_windows(job["warmup_steps"], job["steps"], job["repeats"]))
    else:
        # time to target: cnnlab's own defaults (init, one-cycle, epochs "auto"); the test split is evaluated after
        # every epoch (data.val_source=test), as the peers evaluate test after every epoch
        settings = {"val_source": "test", "epochs": spec["cnnlab_ttt_epochs"]}
    with tempfile.TemporaryDirectory() as out:
        try:
            result = cnnlab.fit(str(datasets_root() / spec["dataset"]), model=spec["model"], precision=precision,
                                seed=job.get("seed", 0), verbose=0, tensorboard=False, out=out + "/run",
                                callbacks=callbacks,
                                overrides=[f"data.{k}={v}" for k, v in settings.items() if k == "val_source"],
                                **{k: v for k, v in settings.items() if k != "val_source"})
        except TypeError as e:  # API drift: report, do not crash the whole benchmark
            raise _Unavailable(f"cnnlab.fit signature differs: {e}") from e
    if callbacks:
        windows = callbacks[0].windows
        if len(windows) < job["repeats"]:
            raise _Unavailable(f"only {len(windows)} timed windows fit in one epoch")
        size = job["batch_size"] * job["steps"]
        return {"images_per_s_repeats": [size / t for t in windows]}
    history = list(getattr(result, "history", []) or [])
    if not history:
        raise _Unavailable("cnnlab.fit returned no .history")
    times = [float(h["time"]) for h in history]
    n_train = job.get("n_train")
    return {
        "epoch_times": times,
        "images_per_s": [n_train / t for t in times] if n_train else [],
        "train_loss": [h.get("loss") for h in history],
        "test_acc": [float(h.get("val_accuracy", h.get("val_acc", float("nan")))) for h in history],
    }


def _step_windows(warmup: int, steps: int, repeats: int) -> Any:
    """A cnnlab Callback timing `repeats` windows of `steps` training steps after `warmup` steps (wall time)."""
    from cnnlab.train.callbacks import Callback

    class StepWindows(Callback):
        def __init__(self) -> None:
            self.marks = {warmup + i * steps for i in range(repeats + 1)}
            self.windows: list[float] = []
            self.t: float | None = None
            self.n = 0

        def on_train_batch_end(self, step: int, logs: dict) -> None:
            self.n += 1
            if self.n in self.marks:
                now = time.perf_counter()
                if self.t is not None:
                    self.windows.append(now - self.t)
                self.t = now

    return StepWindows()


class _Unavailable(Exception):
    """A contender cannot be measured here (not installed, API not there yet)."""


# ------------------------------------------------------------------------------------------------ the workers
def _peer_module(framework: str) -> Any:
    if framework == "torch":
        from benchmarks.peers import torch_loop

        return torch_loop
    if framework == "keras":
        from benchmarks.peers import keras_peer

        reason = keras_peer.available()
        if reason:
            raise _Unavailable(reason)
        return keras_peer
    if framework == "fastai":
        from benchmarks.peers import fastai_peer

        reason = fastai_peer.available()
        if reason:
            raise _Unavailable(reason)
        return fastai_peer
    raise ValueError(f"unknown framework {framework!r}")


def worker(job: dict[str, Any]) -> dict[str, Any]:
    """Run one measurement in this (fresh) process and return its raw numbers."""
    import torch

    torch.set_num_threads(job["threads"])
    spec = CASES[job["case"]]
    framework, precision = job["contender"].split(":")
    t0 = time.perf_counter()
    load = {"load_average_at_start": list(os.getloadavg())}
    if framework == "cnnlab":
        raw = run_cnnlab_case(job["case"], precision, job)
        return {
            "raw": raw,
            "wall_s": time.perf_counter() - t0,
            **load,
            "load_average_at_end": list(os.getloadavg()),
        }
    peer = _peer_module(framework)
    data = load_dataset(spec["dataset"])
    if job["kind"] == "throughput":
        raw = peer.throughput(
            data,
            spec["model"],
            job["batch_size"],
            precision,
            job["warmup_steps"],
            job["steps"],
            job["repeats"],
        )
    else:
        raw = peer.train(
            data,
            spec["model"],
            job["epochs"],
            job["batch_size"],
            1e-3,
            precision,
            job["seed"],
            target=spec["target"],
            augment=spec["augment"],
        )
    return {
        "raw": raw,
        "wall_s": time.perf_counter() - t0,
        **load,
        "load_average_at_end": list(os.getloadavg()),
    }


def _run_worker(job: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run ``worker(job)`` in a fresh interpreter; a failure becomes {"status": "error: ..."}."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(job)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "KERAS_BACKEND": "tensorflow"}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"status": f"error: timed out after {timeout:.0f} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG) :])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"status": "error: " + " | ".join(tail)}


# ----------------------------------------------------------------------------------------------- summarising
def _summarise_throughput(res: dict[str, Any], n_train: int) -> dict[str, Any]:
    raw = res.get("raw", {})
    rates = raw.get("images_per_s_repeats")
    if rates is None and raw.get("epoch_times"):  # cnnlab: steady-state epochs (skip the first)
        times = raw["epoch_times"][1:] or raw["epoch_times"]
        rates = [n_train / t for t in times]
    # images per process-CPU-second x threads: a rough, load-robust estimate of the uncontended rate
    cpu = raw.get("images_per_cpu_s_repeats")
    per_cpu = median(cpu) if cpu else None
    return {**res, "images_per_s": median(rates or []), "images_per_cpu_s": per_cpu}


def _summarise_ttt(runs: list[dict[str, Any]], target: float) -> dict[str, Any]:
    secs, epochs = [], []
    for r in runs:
        raw = r.get("raw")
        if raw:
            s, e = time_to_target(raw["epoch_times"], raw["test_acc"], target)
            r["seconds_to_target"], r["epochs_to_target"] = s, e
            secs.append(s)
            epochs.append(e)
    reached = [s for s in secs if s is not None]
    status = runs[0].get("status", "ok") if runs else "not run"
    if secs and len(reached) < len(secs):
        status = f"reached in {len(reached)}/{len(secs)} runs"
    return {
        "status": status,
        "runs": runs,
        "seconds_to_target": median(reached) if reached else None,
        "epochs_to_target": median([e for e in epochs if e is not None]) if reached else None,
        "median_epoch_images_per_s": median(
            [median(r["raw"]["images_per_s"]) for r in runs if r.get("raw", {}).get("images_per_s")]
        ),
    }


# ------------------------------------------------------------------------------------------------- the driver
def run_case(case: str, contenders: list[str], args: argparse.Namespace, threads: int) -> dict[str, Any]:
    """All measurements of one case, sequentially, each in a fresh process.

    Throughput is measured in `--rounds` rounds that visit every contender in turn, so a slow minute of a shared
    machine hits all of them alike; the median is over every timed window of every round.
    """
    spec = CASES[case]
    n_train = len(load_dataset(spec["dataset"]).train)
    epochs = spec["quick_epochs"] if args.quick else (args.max_epochs or spec["max_epochs"])
    out: dict[str, Any] = {"spec": spec, "n_train": n_train, "max_epochs": epochs, "contenders": {}}
    base = {"case": case, "threads": threads, "batch_size": args.batch_size, "n_train": n_train}
    entries: dict[str, dict[str, Any]] = {c: {} for c in contenders}
    if "throughput" in args.measure:
        job = {**base, "kind": "throughput", "warmup_steps": 30 if args.quick else 50,
               "steps": 40 if args.quick else 80, "repeats": args.repeats}
        rounds: dict[str, list[dict[str, Any]]] = {c: [] for c in contenders}
        for r in range(args.rounds):
            for c in contenders:
                _log(f"[{case}] {c} throughput, round {r + 1}/{args.rounds} ...")
                res = _run_worker({**job, "contender": c}, args.timeout)
                rounds[c].append(res)
                rates = res.get("raw", {}).get("images_per_s_repeats") or []
                _log(f"    -> {[round(x) for x in rates]} img/s {res.get('status', '')}")
        for c, results in rounds.items():
            ok = [x for x in results if x.get("raw")]
            merged = {"raw": {k: [v for x in ok for v in x["raw"].get(k, [])]
                              for k in ("images_per_s_repeats", "images_per_cpu_s_repeats")},
                      "rounds": results}
            if not ok:
                merged = {**results[0], "rounds": results}
            entries[c]["throughput"] = _summarise_throughput(merged, n_train)
    if "ttt" in args.measure:
        for c in contenders:
            runs = []
            for seed in range(args.ttt_repeats):
                _log(f"[{case}] {c} time-to-{spec['target']:.0%} (seed {seed}, <= {epochs} epochs) ...")
                runs.append(_run_worker({**base, "contender": c, "kind": "ttt", "epochs": epochs, "seed": seed},
                                        args.timeout))
            entries[c]["time_to_target"] = _summarise_ttt(runs, spec["target"])
            _log(f"    -> {entries[c]['time_to_target']['seconds_to_target']} s "
                 f"({entries[c]['time_to_target']['status']})")
    out["contenders"] = entries
    return out


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _fmt(v: float | None, spec: str = ".0f") -> str:
    return "-" if v is None else format(v, spec)


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "n/a"


def _cnnlab_ref(entries: dict[str, Any], precision: str) -> dict[str, Any]:
    return entries.get(f"cnnlab:{precision}", {})


def markdown(payload: dict[str, Any]) -> str:
    """Headline ratios cnnlab/peer, then the absolute numbers per case."""
    hw = payload["hardware"]
    default_prec = payload["settings"]["cnnlab_default_precision"]
    threads = payload["settings"]["threads"]
    lines = [
        f"# Speed benchmark `{payload['name']}`",
        "",
        f"{hw['cpu_model']}, {hw['usable_cores']} cores, native bf16: {hw['native_bf16']}; "
        f"torch {hw['versions']['torch']}, tensorflow {hw['versions']['tensorflow']}, "
        f"keras {hw['versions']['keras']}, fastai {hw['versions']['fastai']}; "
        f"batch {payload['settings']['batch_size']}, Adam 1e-3; throughput: median of "
        f"{payload['settings']['repeats']} windows x {payload['settings'].get('rounds', 1)} interleaved rounds "
        "(every contender once per round, a fresh process each); load average at start "
        f"{[round(v, 2) for v in hw['load_average_at_start']]}.",
        "",
    ]
    for case, res in payload["cases"].items():
        ents = res["contenders"]
        target = res["spec"]["target"]
        lines += [
            f"## {case}: {res['spec']['model']} on {res['spec']['dataset']} "
            f"({res['n_train']} train images, target {target:.0%}, <= {res['max_epochs']} epochs)",
            "",
            "### cnnlab / peer (headline)",
            "",
            "| peer | throughput ratio (equal precision) | throughput ratio (cnnlab default "
            f"{default_prec}) | time-to-{target:.0%} speed-up (cnnlab default) |",
            "|---|---|---|---|",
        ]
        cdef = _cnnlab_ref(ents, default_prec)
        for name, e in ents.items():
            if name.startswith("cnnlab"):
                continue
            ceq = _cnnlab_ref(ents, name.split(":")[1])
            tp = e.get("throughput", {}).get("images_per_s")
            eq_tp = ceq.get("throughput", {}).get("images_per_s")
            def_tp = cdef.get("throughput", {}).get("images_per_s")
            peer_s = e.get("time_to_target", {}).get("seconds_to_target")
            def_s = cdef.get("time_to_target", {}).get("seconds_to_target")
            lines.append(f"| {name} | {_ratio(eq_tp, tp)} | {_ratio(def_tp, tp)} | {_ratio(peer_s, def_s)} |")
        lines += [
            "",
            "### absolute numbers",
            "",
            f"| contender | train img/s (median) | img per CPU-s x threads | time-to-{target:.0%} s "
            "(training only) | epochs | full-epoch img/s | test acc per epoch | status |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, e in ents.items():
            tp, tt = e.get("throughput", {}), e.get("time_to_target", {})
            accs = next((r["raw"]["test_acc"] for r in tt.get("runs", []) if r.get("raw")), [])
            status = tp.get("status") or tt.get("status") or "ok"
            cpu_rate = tp["images_per_cpu_s"] * threads if tp.get("images_per_cpu_s") else None
            if tt.get("runs") and tt.get("seconds_to_target") is None and tt.get("status") == "ok":
                status = f"not reached in {res['max_epochs']} epochs"
            lines.append(
                f"| {name} | {_fmt(tp.get('images_per_s'))} | {_fmt(cpu_rate)} "
                f"| {_fmt(tt.get('seconds_to_target'), '.1f')} "
                f"| {_fmt(tt.get('epochs_to_target'), '.0f')} "
                f"| {_fmt(tt.get('median_epoch_images_per_s'))} "
                f"| {' '.join(f'{a:.4f}' for a in accs)} | {status} |"
            )
        lines.append("")
    lines.append(
        "Timings on a shared machine are noisy (other jobs may run at the same time): compare "
        "medians, "
        "and rerun before drawing conclusions from differences under ~10%."
    )
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="short windows, few epochs: a smoke run")
    p.add_argument("--repeats", type=int, default=3, help="timed throughput windows per contender and round")
    p.add_argument("--rounds", type=int, default=3, help="throughput rounds, each visiting every contender once")
    p.add_argument("--ttt-repeats", type=int, default=1, help="time-to-target runs (seeds) per contender")
    p.add_argument("--cases", default="mnist", help=f"comma list of {sorted(CASES)}")
    p.add_argument("--contenders", default=",".join(CONTENDERS), help="comma list of framework:precision")
    p.add_argument("--measure", default="throughput,ttt", help="throughput, ttt or both")
    p.add_argument("--max-epochs", type=int, default=None, help="cap for time-to-target runs")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--timeout", type=float, default=1800, help="seconds per worker process")
    p.add_argument("--name", default=None, help="result file stem (default speed_<cases>[_quick])")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        job = json.loads(args.worker)
        try:
            res = worker(job)
        except _Unavailable as e:
            res = {"status": f"unavailable: {e}"}
        print(RESULT_TAG + json.dumps(res), flush=True)
        return 0
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    contenders = [c.strip() for c in args.contenders.split(",") if c.strip()]
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    name = args.name or f"speed_{'_'.join(cases)}{'_quick' if args.quick else ''}"
    payload: dict[str, Any] = {
        "name": name,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "hardware": hardware_info(),
        "settings": {
            "batch_size": args.batch_size,
            "optimizer": "adam",
            "lr": 1e-3,
            "repeats": args.repeats,
            "rounds": args.rounds,
            "ttt_repeats": args.ttt_repeats,
            "quick": args.quick,
            "threads": threads,
            "cnnlab_default_precision": "bf16" if has_native_bf16() else "fp32",
            "contenders": contenders,
            "measure": args.measure,
        },
        "cases": {},
    }
    for case in cases:
        payload["cases"][case] = run_case(case, contenders, args, threads)
    payload["hardware"]["load_average_at_end"] = list(os.getloadavg())
    json_path, md_path = write_results(name, payload, markdown(payload))
    print(md_path.read_text())
    print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
