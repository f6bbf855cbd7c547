"""Transfer-learning acceptance numbers (issue 5): feature extraction, fine-tuning and training from scratch.

    PYTHONPATH=$PWD python benchmarks/bench_transfer.py            # everything (about 10 min on 2 free cores)
    PYTHONPATH=$PWD python benchmarks/bench_transfer.py --only cats

cats_vs_dogs (2,000 train / 1,000 val, 160 px) from the ImageNet MobileNetV1 x0.25 checkpoint:
  feature-extract (first run, empty feature cache), a second feature-extract run with another head (cache hit),
  fine-tune, and the same architecture from scratch with the fine-tune budget.
aerial_cactus (14,000 images, 32 px, 80/20 split) from the CIFAR-10 ResNet-20 checkpoint: feature-extract,
  fine-tune and scratch, by val ROC AUC (sklearn roc_auc_score on P(has_cactus)) and accuracy.
Every case is one `python -m cnnlab train` command; its wall time is measured around the whole process (start-up,
decoding, features, training, run folder). The load average (`uptime`) before each case is recorded: the machine is
shared, so wall times are only comparable at similar load. Results: benchmarks/results/transfer.{json,md}.
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

REPO = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("CNNLAB_DATASETS", REPO.parent / "shared" / "datasets"))
RESULTS = REPO / "benchmarks" / "results"
MNV1 = ["--model", "mobilenet_v1", "--model-arg", "width=0.25", "--model-arg", "activation=leaky_relu:0.1"]
MNV1_WEIGHTS = ["--weights", str(DATASETS / "weights" / "mobilenetV1X0.25_pretrain.tar")]
R20_WEIGHTS = ["--weights", str(DATASETS / "weights" / "resnet20-12fca82f.th")]
COMMON = ["--quiet", "--no-tensorboard"]


def cases() -> list[dict]:
    cats, cactus = str(DATASETS / "cats_vs_dogs"), str(DATASETS / "aerial_cactus" / "train.csv")
    ft_budget = ["--epochs", "3", "--batch-size", "32"]  # what fine-tune's defaults resolve to on cats_vs_dogs
    return [
        {"group": "cats", "name": "feature-extract (linear head, cold cache)", "data": cats,
         "args": [*MNV1, *MNV1_WEIGHTS, "--strategy", "feature-extract"], "limit_s": 60},
        {"group": "cats", "name": "feature-extract, 2nd run (mlp head, cache hit)", "data": cats,
         "args": [*MNV1, *MNV1_WEIGHTS, "--strategy", "feature-extract", "--head", "mlp", "--epochs", "20"],
         "limit_s": 10},
        {"group": "cats", "name": "feature-extract, 3rd run (logreg head, cache hit)", "data": cats,
         "args": [*MNV1, *MNV1_WEIGHTS, "--strategy", "feature-extract", "--head", "logreg"], "limit_s": 10},
        {"group": "cats", "name": "fine-tune (defaults: last 4 blocks + head, batch 32, 3 epochs)", "data": cats,
         "args": [*MNV1, *MNV1_WEIGHTS, "--strategy", "fine-tune"], "limit_s": 180},
        {"group": "cats", "name": "scratch (same architecture and budget)", "data": cats,
         "args": [*MNV1, "--image-size", "160", *ft_budget], "limit_s": None},
        {"group": "cactus", "name": "feature-extract (linear head)", "data": cactus,
         "args": ["--model", "resnet20", *R20_WEIGHTS, "--strategy", "feature-extract", "--epochs", "20"]},
        {"group": "cactus", "name": "fine-tune (last 4 blocks + head)", "data": cactus,
         "args": ["--model", "resnet20", *R20_WEIGHTS, "--strategy", "fine-tune", "--unfreeze", "4", "--epochs", "3",
                  "--batch-size", "64"]},
        {"group": "cactus", "name": "full fine-tune (all groups, discriminative LRs)", "data": cactus,
         "args": ["--model", "resnet20", *R20_WEIGHTS, "--strategy", "full", "--epochs", "3", "--batch-size", "64"]},
        {"group": "cactus", "name": "scratch (same architecture and budget)", "data": cactus,
         "args": ["--model", "resnet20", "--epochs", "3", "--batch-size", "64"]},
    ]


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


def val_roc_auc(run_dir: Path) -> float | None:
    """ROC AUC of P(class 1) on the run's own val split (recreated from its config, as `evaluate` does)."""
    from sklearn.metrics import roc_auc_score

    from cnnlab.data.dataset import decode_split
    from cnnlab.data.readers import load_source
    from cnnlab.inference import load_run

    run = load_run(run_dir)
    d = run.config.data
    src = load_source(d.source, val_split=d.val_split, seed=run.config.train.seed, images=d.images, id_col=d.id_col,
                      label_col=d.label_col)
    val = decode_split(src, src.splits["val"], run.geometry, d.resize)
    probs = run.predictor.predict_proba(val.x, run.config.train.eval_batch_size)
    positive = run.class_names.index("1") if "1" in run.class_names else 1
    labels = [src.class_names[int(i)] for i in val.y]
    return float(roc_auc_score([lab == run.class_names[positive] for lab in labels], probs[:, positive].numpy()))


def run_case(case: dict, out_root: Path, env: dict) -> dict:
    out = out_root / f"{case['group']}-{len(list(out_root.iterdir()))}"
    cmd = [sys.executable, "-m", "cnnlab", "train", case["data"], *case["args"], *COMMON, "--out", str(out)]
    load = load_average()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    row = {"group": case["group"], "case": case["name"], "val_accuracy": round(metrics["val"]["accuracy"], 4),
           "wall_s": round(wall, 1), "limit_s": case.get("limit_s"), "load_before": load,
           "load_after": load_average(), "train_time_s": metrics.get("train_time_s"),
           "command": "cnnlab train " + " ".join([Path(case["data"]).name, *case["args"]])}
    transfer = out / "transfer.json"
    if transfer.is_file():
        rec = json.loads(transfer.read_text())
        row["strategy"] = rec["strategy"]
        if "features" in rec:
            row["feature_cache_hit"] = rec["features"]["cache_hit"]
            row["feature_seconds"] = rec["features"]["seconds"]
    if case["group"] == "cactus":
        row["val_roc_auc"] = round(val_roc_auc(out), 4)
    print(json.dumps(row), flush=True)
    return row


def write_results(rows: list[dict], meta: dict) -> None:
    """Write the table; with --only, the other dataset's rows are kept from the previous results file."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    previous = RESULTS / "transfer.json"
    if previous.is_file():
        ran = {r["group"] for r in rows}
        kept = [r for r in json.loads(previous.read_text())["results"] if r["group"] not in ran]
        rows = [r for g in ("cats", "cactus") for r in [*rows, *kept] if r["group"] == g]
    (RESULTS / "transfer.json").write_text(json.dumps({"meta": meta, "results": rows}, indent=2), encoding="utf-8")
    lines = [f"# Transfer learning (issue 5) -- {meta['date']}, {meta['cpu']} ({meta['threads']} threads)", "",
             "Wall time = the whole `cnnlab train` command. Load = 1-minute load average before / after the case "
             "(the machine is shared; 2 cores).", "",
             "| data | case | val acc | val ROC AUC | wall s | limit s | load | feature cache |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cache = "" if "feature_cache_hit" not in r else ("hit" if r["feature_cache_hit"] else
                                                         f"miss ({r['feature_seconds']:.1f}s)")
        lines.append(f"| {r['group']} | {r['case']} | {r['val_accuracy']:.4f} | {r.get('val_roc_auc', '')} | "
                     f"{r['wall_s']} | {r['limit_s'] or ''} | {r['load_before']} / {r['load_after']} | {cache} |")
    lines += ["", "Commands:", ""] + [f"- {r['case']}: `{r['command']}`" for r in rows]
    (RESULTS / "transfer.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("cats", "cactus"), help="run one dataset's cases")
    args = parser.parse_args()
    import platform

    import torch

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "PYTHONPATH": str(REPO), "CNNLAB_CACHE_DIR": str(Path(tmp) / "cache")}
        out_root = Path(tmp) / "runs"
        out_root.mkdir()
        for case in cases():
            if args.only is None or case["group"] == args.only:
                rows.append(run_case(case, out_root, env))
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(), "torch": torch.__version__}
    write_results(rows, meta)
    print((RESULTS / "transfer.md").read_text())


if __name__ == "__main__":
    main()
