"""`cnnlab train --lr find` against the default lr (issue 13): the range test's suggested lr, its spread over 3
seeds, and the val accuracy of a run with it against the same run at the optimizer's default lr.

    PYTHONPATH=$PWD python benchmarks/bench_lr_find.py            # both cases (about 10 min on 2 loaded cores)
    PYTHONPATH=$PWD python benchmarks/bench_lr_find.py --only cifar

cats_vs_dogs: fine-tuning the ImageNet MobileNetV1 x0.25 checkpoint (the transfer benchmark's fine-tune case).
cifar10: seed_cnn from scratch, 1 epoch (a short budget: the machine is shared).
Each run is one `python -m cnnlab train` process, timed around the whole process; the load average before each run
is recorded. Results: benchmarks/results/lr_find.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import datasets_root, hardware_info, write_results  # noqa: E402

DATASETS = datasets_root()
MNV1 = ["--model", "mobilenet_v1", "--model-arg", "width=0.25", "--model-arg", "activation=leaky_relu:0.1",
        "--weights", str(DATASETS / "weights" / "mobilenetV1X0.25_pretrain.tar"), "--strategy", "fine-tune"]
CASES = {
    "cats": {"name": "cats_vs_dogs, MobileNetV1 x0.25 fine-tune (3 epochs, batch 32)",
             "data": str(DATASETS / "cats_vs_dogs"), "args": MNV1},
    "cifar": {"name": "cifar10 (8,000 train), seed_cnn from scratch (1 epoch, batch 128)",
              "data": str(DATASETS / "cifar10"), "args": ["--model", "seed_cnn", "--epochs", "1"]},
    "cifar5": {"name": "cifar10 (8,000 train), seed_cnn from scratch (5 epochs, batch 128)",
               "data": str(DATASETS / "cifar10"), "args": ["--model", "seed_cnn", "--epochs", "5"]},
}
DEFAULT_ADAM_LR = 3e-3
COMMON = ["--quiet", "--no-tensorboard", "--no-csv-log"]


def train(data: str, args: list[str], out: Path) -> dict:
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    if (out / "metrics.json").is_file():  # done by an earlier, interrupted run of this script (--keep DIR)
        saved = json.loads((out / "bench_wall.json").read_text())
        return read_run(out, saved["wall_s"], saved["load"])
    proc = subprocess.run([sys.executable, "-m", "cnnlab", "train", data, *args, *COMMON, "--out", str(out)],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(Path.cwd())})
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"failed: {' '.join(args)}\n{proc.stderr[-2000:]}")
    (out / "bench_wall.json").write_text(json.dumps({"wall_s": round(wall, 1), "load": round(load, 2)}))
    return read_run(out, wall, load)


def read_run(out: Path, wall: float | None, load: float) -> dict:
    metrics = json.loads((out / "metrics.json").read_text())
    config = (out / "config.yaml").read_text()
    text = next(line.split(":")[1] for line in config.splitlines() if line.strip().startswith("lr:")).strip()
    lr = DEFAULT_ADAM_LR if text == "null" else float(text)  # null: the optimizer's default (adam)
    return {"val_accuracy": metrics["val"]["accuracy"], "lr": lr,
            "wall_s": round(wall, 1) if wall is not None else None, "load": round(load, 2)}


def run_case(key: str, tmp: Path) -> dict:
    case = CASES[key]
    found = train(case["data"], [*case["args"], "--lr", "find"], tmp / f"{key}-find")
    sweep = json.loads((tmp / f"{key}-find" / "lr_find.json").read_text())
    default = train(case["data"], case["args"], tmp / f"{key}-default")
    return {"case": case["name"], "suggested_lr": found["lr"], "seed_low": sweep["low"], "seed_high": sweep["high"],
            "seed_suggestions": [s["suggested"] for s in sweep["sweeps"]], "find": found, "default": default}


def markdown(rows: list[dict]) -> str:
    lines = ["# `--lr find` against the default lr", "",
             "| case | suggested lr | spread over 3 seeds | val acc (lr find) | default lr | val acc (default) | "
             "wall find / default (s) | load |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        f, d = r["find"], r["default"]
        lines.append(f"| {r['case']} | {r['suggested_lr']:.2g} | {r['seed_low']:.1e}..{r['seed_high']:.1e} | "
                     f"{f['val_accuracy']:.4f} | {d['lr']:.2g} | {d['val_accuracy']:.4f} | {f['wall_s']} / "
                     f"{d['wall_s']} | {f['load']} / {d['load']} |")
    lines += ["", "The suggested lr is a tenth of the lr at the lowest smoothed loss of an exponential sweep "
              "(1e-6..1, 100 steps of 64 images from up to 2,000 training images), the geometric mean over 3 seeds "
              "(batch orders). The sweep trains every trainable layer of the model as built (before the transfer "
              "strategy freezes layers).", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", choices=sorted(CASES))
    parser.add_argument("--keep", help="keep the run folders here (and reuse finished ones)")
    args = parser.parse_args()
    keys = [args.only] if args.only else list(CASES)
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run_case(k, Path(args.keep or tmp)) for k in keys]
    for r in rows:
        print(json.dumps(r))
    write_results("lr_find", {"rows": rows, "hardware": hardware_info()}, markdown(rows))


if __name__ == "__main__":
    main()
