"""Distributed training throughput (issue 17): `cnnlab train --nproc N` for N = 1, 2 on the same data.

    PYTHONPATH=$PWD python benchmarks/bench_distributed.py [--nprocs 1,2] [--epochs 2]

seed_cnn on MNIST (60,000 train images, batch 128, bf16 where native) and ResNet-20 on the cifar10 npz: each
configuration is one whole `cnnlab train` command; images/s is the train-split size over each epoch's training
time from metrics.csv (the last epoch, after warm-up), and the wall time of the command is kept too. Every run
happens alone, one after another; the load average before each is recorded. Results:
benchmarks/results/distributed.{json,md}.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import datasets_root, hardware_info, write_results  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CASES = {"seed_cnn / MNIST": ("mnist", "seed_cnn", 60_000 * 0.8),
         "ResNet-20 / cifar10": ("cifar10", "resnet20", 10_000 * 0.8)}


def run_case(data: str, model: str, nproc: int, epochs: int, out: Path) -> dict[str, Any]:
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "cnnlab", "train", str(datasets_root() / data), "--model", model, "--epochs",
           str(epochs), "--nproc", str(nproc), "--out", str(out), "--quiet", "--no-tensorboard"]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        return {"error": done.stderr[-500:], "load_before": load}
    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return {"epoch_times_s": [float(r["time"]) for r in rows], "wall_s": round(wall, 2), "load_before": load,
            "val_accuracy": float(rows[-1]["val_accuracy"])}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--nprocs", default="1,2")
    p.add_argument("--epochs", type=int, default=2)
    args = p.parse_args()
    results: dict[str, Any] = {"hardware": hardware_info(), "cases": {}}
    lines = ["| case | processes | train img/s (last epoch) | wall s | val accuracy | load before |",
             "|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        for name, (data, model, n_train) in CASES.items():
            for nproc in (int(n) for n in args.nprocs.split(",")):
                r = run_case(data, model, nproc, args.epochs, Path(tmp) / f"{model}-{nproc}")
                r["images_per_s"] = round(n_train / r["epoch_times_s"][-1], 1) if "epoch_times_s" in r else None
                results["cases"][f"{name} x{nproc}"] = r
                lines.append(f"| {name} | {nproc} | {r['images_per_s']} | {r.get('wall_s')} | "
                             f"{r.get('val_accuracy')} | {r['load_before']:.2f} |")
                print(lines[-1], flush=True)
    md = "# Distributed training throughput (`cnnlab train --nproc N`)\n\n" + "\n".join(lines) + "\n"
    write_results("distributed", results, md)


if __name__ == "__main__":
    main()
