"""Kill-and-resume on MNIST: for a few seeds, SIGKILL `cnnlab train` at a random step, resume it with
`cnnlab train --resume`, and compare with the same run never interrupted (weights with torch.equal, metrics.json
and metrics.csv without wall times).

    python benchmarks/kill_resume.py                 # 3 seeds, 6,000-image MNIST subset, 2 epochs
    python benchmarks/kill_resume.py --seeds 0 1 2 3 4 --train 12000 --epochs 3

Writes benchmarks/results/kill_resume.json and .md. The subset is written to a temporary folder, never the repo.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from test_kill_resume import same_run, saved_step  # noqa: E402  (the test's comparison, reused)

from cnnlab.data.readers import read_idx  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def datasets_dir() -> Path:
    return Path(os.environ.get("CNNLAB_DATASETS", ROOT.parent / "shared" / "datasets"))


def write_subset(out: Path, n_train: int, n_test: int) -> Path:
    mnist = datasets_dir() / "mnist"
    x = read_idx(mnist / "train-images-idx3-ubyte.gz")[:n_train]
    y = read_idx(mnist / "train-labels-idx1-ubyte.gz")[:n_train]
    xt = read_idx(mnist / "t10k-images-idx3-ubyte.gz")[:n_test]
    yt = read_idx(mnist / "t10k-labels-idx1-ubyte.gz")[:n_test]
    path = out / "mnist_subset.npz"
    np.savez(path, x_train=x, y_train=y, x_test=xt, y_test=yt)
    return path


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def train_cmd(data: Path, out: Path, seed: int, epochs: int, every: int) -> list[str]:
    return [sys.executable, "-m", "cnnlab", "train", str(data), "--model", "seed_cnn", "--epochs", str(epochs),
            "--batch-size", "64", "--seed", str(seed), "--checkpoint-every", str(every), "--precision", "fp32",
            "--quiet", "--no-tensorboard", "--out", str(out)]


def one_seed(data: Path, work: Path, seed: int, epochs: int, every: int, steps_per_epoch: int) -> dict:
    total = epochs * steps_per_epoch
    kill_at = random.Random(seed).randint(total // 5, 4 * total // 5)
    ref_dir, run_dir = work / f"ref{seed}", work / f"killed{seed}"
    t0 = time.perf_counter()
    ref = subprocess.Popen(train_cmd(data, ref_dir, seed, epochs, every), env=env(), cwd=work)
    victim = subprocess.Popen(train_cmd(data, run_dir, seed, epochs, every), env=env(), cwd=work)
    while saved_step(run_dir) < kill_at:
        if victim.poll() is not None:
            raise RuntimeError(f"seed {seed}: the run ended before step {kill_at}")
        time.sleep(0.03)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    state = torch.load(run_dir / "last_state.pt", weights_only=True)
    resumed = subprocess.run([sys.executable, "-m", "cnnlab", "train", "--resume", str(run_dir)], env=env(),
                             cwd=work, capture_output=True, text=True)
    if ref.wait() != 0 or resumed.returncode != 0:
        raise RuntimeError(f"seed {seed}: a run failed: {resumed.stderr[-1000:]}")
    try:
        same_run(ref_dir, run_dir)
        identical, detail = True, ""
    except AssertionError as e:
        identical, detail = False, str(e)[:300]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {"seed": seed, "kill_after_step": kill_at, "checkpoint_step": int(state["global_step"]),
            "resumed_at": {"epoch": int(state["epoch"]) + 1, "step": int(state["step"])}, "total_steps": total,
            "identical": identical, "detail": detail, "test_accuracy": metrics["test"]["accuracy"],
            "seconds": round(time.perf_counter() - t0, 1)}


def write_results(rows: list[dict], args: argparse.Namespace, load: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"rows": rows, "train_images": args.train, "epochs": args.epochs, "checkpoint_every": args.every,
               "machine_load": load, "torch": torch.__version__, "threads_per_process": 1}
    (RESULTS / "kill_resume.json").write_text(json.dumps(payload, indent=2))
    lines = [f"# Kill-and-resume on MNIST ({args.train} train images, {args.epochs} epochs, seed_cnn, batch 64, "
             f"checkpoint every {args.every} steps)", "",
             f"Machine load at start: `{load}`. One thread per process.", "",
             "| seed | SIGKILL after step | checkpoint step | resumed at | identical to uninterrupted | "
             "test accuracy | seconds |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        at = f"epoch {r['resumed_at']['epoch']}, step {r['resumed_at']['step']}"
        lines.append(f"| {r['seed']} | {r['kill_after_step']} / {r['total_steps']} | {r['checkpoint_step']} | {at} | "
                     f"{'yes' if r['identical'] else 'NO ' + r['detail']} | {r['test_accuracy']:.4f} | "
                     f"{r['seconds']} |")
    lines += ["", "Identical: every tensor of last.safetensors and best.safetensors equal (torch.equal), "
              "metrics.json and metrics.csv equal except wall times."]
    (RESULTS / "kill_resume.md").write_text("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--train", type=int, default=6000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--every", type=int, default=10)
    args = parser.parse_args()
    load = os.popen("uptime").read().strip()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = write_subset(work, args.train, 1000)
        steps_per_epoch = -(-int(args.train * 0.8) // 64)
        for seed in args.seeds:
            rows.append(one_seed(data, work, seed, args.epochs, args.every, steps_per_epoch))
            print(json.dumps(rows[-1]))
    write_results(rows, args, load)
    return 0 if all(r["identical"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
