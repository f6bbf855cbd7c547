"""cnnlab tune acceptance numbers (issue 14).

    PYTHONPATH=$PWD python benchmarks/bench_tune.py                 # everything (about 10 min on 2 free cores)
    PYTHONPATH=$PWD python benchmarks/bench_tune.py --only cats     # cats | pruning | threads

- cats: cats_vs_dogs (2,000 train / 1,000 val, 160 px), MobileNetV1 x0.25 ImageNet checkpoint, feature-extract.
  The default `cnnlab train` run first (it also warms the feature cache), then `cnnlab tune --trials 100
  --workers 2` over the default head space (lr, weight decay, linear / mlp head, its width and dropout).
  Accepted: under 120 s, best val accuracy >= the default run's.
- pruning: cifar10 npz from scratch (10,000 train images -> 8,000 / 2,000 val), seed_cnn width 8, 8 epochs,
  16 random trials (the same 16 configurations in both: proposals depend only on the seed and the trial number),
  median pruning against none, 2 workers. Accepted: pruning saves >= 40% of the epochs, best within noise.
- threads: the same cifar trials (8 trials, 3 epochs, no pruning) with `--workers 2` (one thread each) against two
  `cnnlab tune` commands joining one study with the default threads (two each: oversubscribed); seconds per trial.
Every case is a `python -m cnnlab` command timed around the whole process; the load average before each is kept
(the machine is shared). Results: benchmarks/results/tune.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("CNNLAB_DATASETS", REPO.parent / "shared" / "datasets"))
RESULTS = REPO / "benchmarks" / "results"
MNV1 = ["--model", "mobilenet_v1", "--model-arg", "width=0.25", "--model-arg", "activation=leaky_relu:0.1",
        "--weights", str(DATASETS / "weights" / "mobilenetV1X0.25_pretrain.tar"), "--strategy", "feature-extract"]
CIFAR_NPZ = str(DATASETS / "cifar10" / "train.npz")
CIFAR = ["--model", "seed_cnn", "--model-arg", "width=8", "--no-tensorboard"]
CIFAR_SPACE = {"train.lr": {"loguniform": [1e-4, 3e-2]}, "train.weight_decay": {"loguniform": [1e-6, 1e-2]},
               "train.optimizer": {"choice": ["adam", "sgd"]}, "model.kwargs.dropout": {"uniform": [0.0, 0.5]}}


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


def cnnlab(*args: str, env: dict | None = None) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "cnnlab", *args], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "160", **(env or {})})
    if r.returncode != 0:
        raise SystemExit(f"cnnlab {' '.join(args)} failed:\n{r.stderr[-3000:]}")
    return round(time.perf_counter() - t0, 1), r


def study(out: Path) -> dict:
    record = json.loads((out / "tune.json").read_text())
    trials = record["trials"]
    return {"best": record.get("best", {}).get("value"), "counts": {k: v for k, v in record["counts"].items() if v},
            "epochs": sum(t["epochs"] or 0 for t in trials),
            "seconds_per_trial": round(statistics.fmean(t["seconds"] for t in trials if t["seconds"]), 2)}


def bench_cats(tmp: Path) -> dict:
    cats = str(DATASETS / "cats_vs_dogs")
    load = load_average()
    wall, _ = cnnlab("train", cats, *MNV1, "--quiet", "--no-tensorboard", "--out", str(tmp / "default"))
    default = json.loads((tmp / "default" / "metrics.json").read_text())
    out = tmp / "cats-tune"
    load_tune = load_average()
    tune_wall, r = cnnlab("tune", cats, *MNV1, "--no-tensorboard", "--trials", "100", "--workers", "2",
                          "--out", str(out))
    s = study(out)
    return {"default_run": {"val_accuracy": default["best"]["val_accuracy"], "wall_s": wall, "load": load},
            "tune_100": {"wall_s": tune_wall, "load": load_tune, **s, "table": table_of(r.stdout)},
            "accepted": tune_wall < 120 and s["best"] >= default["best"]["val_accuracy"]}


def table_of(stdout: str) -> str:
    lines = stdout.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip().startswith("top ")), None)
    return "\n".join(lines[start:]) if start is not None else ""


def bench_pruning(tmp: Path) -> dict:
    space = tmp / "cifar_space.yaml"
    space.write_text(json.dumps(CIFAR_SPACE))  # JSON is YAML
    out: dict = {}
    for pruner in ("none", "median"):
        folder = tmp / f"cifar-{pruner}"
        load = load_average()
        wall, _ = cnnlab("tune", CIFAR_NPZ, *CIFAR, "--epochs", "8", "--trials", "16", "--workers", "2",
                         "--space", str(space), "--pruner", pruner, "--out", str(folder))
        out[pruner] = {"wall_s": wall, "load": load, **study(folder)}
    saved = 1 - out["median"]["epochs"] / out["none"]["epochs"]
    out["epochs_saved"] = round(saved, 3)
    out["best_difference"] = round(out["median"]["best"] - out["none"]["best"], 4)
    out["accepted"] = saved >= 0.4 and out["best_difference"] >= -0.01
    return out


def bench_threads(tmp: Path) -> dict:
    space = tmp / "cifar_space.yaml"
    space.write_text(json.dumps(CIFAR_SPACE))
    args = [CIFAR_NPZ, *CIFAR, "--epochs", "3", "--trials", "8", "--space", str(space), "--pruner",
            "none"]
    out: dict = {}
    load = load_average()
    wall, _ = cnnlab("tune", *args, "--workers", "2", "--out", str(tmp / "split"))
    out["workers_2_one_thread_each"] = {"wall_s": wall, "load": load, **study(tmp / "split")}
    load = load_average()
    t0 = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "cnnlab", "tune", *args, "--out", str(tmp / "over")]
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(4)  # the first command writes tune.yaml; the second joins the same study
    second = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if first.wait() or second.wait():
        raise SystemExit("oversubscribed tune failed: " + (first.stderr.read() + second.stderr.read()).decode())
    out["two_commands_default_threads"] = {"wall_s": round(time.perf_counter() - t0, 1), "load": load,
                                           **study(tmp / "over")}
    a, b = (out[k]["seconds_per_trial"] for k in ("workers_2_one_thread_each", "two_commands_default_threads"))
    out["accepted"] = a <= b * 1.05
    return out


def counts(c: dict) -> str:
    return ", ".join(f"{n} {k.lower()}" for k, n in c.items())


def markdown(results: dict) -> str:
    lines = ["# cnnlab tune benchmark", ""]
    if "cats" in results:
        c = results["cats"]
        t = c["tune_100"]
        lines += ["## cats_vs_dogs, MobileNetV1 x0.25 feature-extract, 100 head trials, 2 workers", "",
                  "| run | val accuracy | wall s | trials | s / trial | load |", "|---|---|---|---|---|---|",
                  f"| default `cnnlab train` | {c['default_run']['val_accuracy']:.4f} | {c['default_run']['wall_s']} "
                  f"| 1 | | {c['default_run']['load']} |",
                  f"| `cnnlab tune --trials 100 --workers 2` | {t['best']:.4f} (best) | {t['wall_s']} "
                  f"| {counts(t['counts'])} | {t['seconds_per_trial']} | {t['load']} |", "",
                  f"accepted: {c['accepted']}", "",
                  "pruned trials (median pruner) stopped early; the table below is the command's own output:", "",
                  "```",
                  t["table"], "```", ""]
    if "pruning" in results:
        p = results["pruning"]
        lines += ["## cifar10 from scratch, 16 random trials x 8 epochs, 2 workers: median pruning vs none", "",
                  "| pruner | best val accuracy | epochs run | trials | wall s | load |", "|---|---|---|---|---|---|"]
        lines += [f"| {k} | {p[k]['best']:.4f} | {p[k]['epochs']} | {counts(p[k]['counts'])} | {p[k]['wall_s']} | "
                  f"{p[k]['load']} |" for k in ("none", "median")]
        lines += ["", f"epochs saved: {p['epochs_saved']:.1%}; best difference {p['best_difference']:+.4f}; "
                  f"accepted: {p['accepted']}", ""]
    if "threads" in results:
        t = results["threads"]
        lines += ["## threads: 8 cifar trials x 3 epochs", "", "| how | s / trial | wall s | load |",
                  "|---|---|---|---|"]
        lines += [f"| {k} | {t[k]['seconds_per_trial']} | {t[k]['wall_s']} | {t[k]['load']} |"
                  for k in ("workers_2_one_thread_each", "two_commands_default_threads")]
        lines += ["", f"accepted: {t['accepted']}", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", choices=("cats", "pruning", "threads"))
    args = parser.parse_args()
    cases = {"cats": bench_cats, "pruning": bench_pruning, "threads": bench_threads}
    results: dict = {}
    path = RESULTS / "tune.json"
    if args.only and path.is_file():
        results = json.loads(path.read_text())
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("CNNLAB_CACHE_DIR", str(Path(tmp) / "cache"))
        for name, case in cases.items():
            if args.only in (None, name):
                results[name] = case(Path(tmp))
                RESULTS.mkdir(parents=True, exist_ok=True)  # saved after every case
                path.write_text(json.dumps(results, indent=2))
                (RESULTS / "tune.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
