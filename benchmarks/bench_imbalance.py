"""Imbalanced data: no treatment vs each `--balance` treatment, on a long-tailed MNIST and on aerial cactus.

    PYTHONPATH=$PWD python benchmarks/bench_imbalance.py            # ~10 min on 2 shared CPU cores

Long-tailed MNIST (from ../shared/datasets/mnist): classes 0-4 keep `--majority` (400) training images each (a
subset of MNIST's ~6,000, to fit the time budget), classes 5-9 keep `--minority` (8, i.e. 2% of the majority count:
an imbalance ratio of 50) each; a stratified 20% of that is the val split (so 320 vs 6 train images per class).
Keeping 1% of the minority classes' full MNIST images (~55) beside a 500-image majority subset gives a ratio of only
~9, where the untreated model already reached 0.865 minority recall (measured, then stopped for time).
Scored on the untouched MNIST test set (10,000 images): balanced accuracy and the mean recall of the minority classes
5-9. seed_cnn, default settings except epochs / batch size. Undersampling's epochs are short (10 classes x 6
images), so it gets as many epochs as give it the same number of optimizer steps.
"SMOTE (features)": the penultimate-layer (pre_logits, 128-d) features of the untreated model on its own train split,
SMOTE'd (k=5, capped below the smallest class's count), then a new linear head (scikit-learn multinomial logistic
regression) on them; the control row "head refit (no SMOTE)" refits the same head on the unresampled features, to
separate SMOTE from the refit.

Aerial cactus (25% no cactus / 75% cactus): a stratified 20% test split is held out first; training uses a
stratified `--cactus-train` (1,200) subset of the rest (time budget), with its own 20% val split. Scored on the test
split by ROC AUC (Kaggle's metric) and balanced accuracy. "threshold" is the untreated model with the decision
threshold moved to maximize val balanced accuracy ("none" is that same model with argmax).

Writes benchmarks/results/imbalance.json and imbalance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import cnnlab
from cnnlab.data.balance import resample_features
from cnnlab.data.dataset import ImageGeometry, decode_split
from cnnlab.data.readers import load_source, stratified_split
from cnnlab.tasks.classification.metrics import metrics_from_confusion

ROOT = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("CNNLAB_DATASETS", ROOT.parent / "shared" / "datasets"))
RESULTS = ROOT / "benchmarks" / "results"


def long_tailed_mnist(path: Path, majority: int, minority: int, seed: int) -> dict:
    src = load_source(str(DATASETS / "mnist"), val_split=0.0)
    train, test = src.splits["train"], src.splits["test"]
    rng = np.random.default_rng(seed)
    keep = []
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(train.labels == c))
        keep.append(idx[:majority] if c < 5 else idx[:minority])
    keep = np.sort(np.concatenate(keep))
    np.savez(path, x=train.array[keep, ..., 0], y=train.labels[keep], x_test=test.array[..., 0], y_test=test.labels)
    return {"train_counts": np.bincount(train.labels[keep], minlength=10).tolist(), "test_count": len(test.labels)}


def cactus_npz(path: Path, train_size: int, seed: int) -> dict:
    src = load_source(str(DATASETS / "aerial_cactus" / "train.csv"), val_split=0.0)
    decoded = decode_split(src, src.splits["train"], ImageGeometry((32, 32), 3), "crop")
    x, y = decoded.x.permute(0, 2, 3, 1).numpy(), decoded.y.numpy()
    rest, test = stratified_split(y, 0.2, seed)
    sub, _ = stratified_split(y[rest], 1 - train_size / len(rest), seed)
    tr = rest[sub]
    np.savez(path, x=x[tr], y=y[tr], x_test=x[test], y_test=y[test], class_names=np.array(src.class_names))
    return {"class_names": src.class_names, "train_counts": np.bincount(y[tr]).tolist(),
            "test_counts": np.bincount(y[test]).tolist()}


def train(data: Path, out: Path, balance: list[str], epochs: int, batch_size: int, **kwargs) -> cnnlab.Run:
    t0 = time.perf_counter()
    run = cnnlab.fit(str(data), model="seed_cnn", epochs=epochs, batch_size=batch_size, balance=balance,
                     out=str(out), verbose=0, tensorboard=False, **kwargs)
    run.meta["bench_wall_s"] = round(time.perf_counter() - t0, 1)
    return run


def mnist_row(name: str, cm: list[list[int]], wall: float | None) -> dict:
    m = torch.tensor(cm, dtype=torch.float64)
    recall = (m.diag() / m.sum(1)).tolist()
    return {"treatment": name, "balanced_accuracy": metrics_from_confusion(m)["balanced_accuracy"],
            "minority_recall": float(np.mean(recall[5:])), "majority_recall": float(np.mean(recall[:5])),
            "accuracy": float(m.diag().sum() / m.sum()), "wall_s": wall}


@torch.no_grad()
def penultimate(run: cnnlab.Run, x: torch.Tensor, batch: int = 1000) -> np.ndarray:
    """pre_logits features (N, 128) of uint8 images (N, 1, 28, 28) through the run's own normalisation."""
    model, trainer = run.model.eval(), run.predictor
    out = []
    for lo in range(0, len(x), batch):
        z = trainer.preprocess(x[lo : lo + batch].to(trainer.device))
        out.append(model.forward_head(model.forward_features(z), pre_logits=True).float().cpu())
    return torch.cat(out).numpy()


def smote_features_rows(run: cnnlab.Run, data: Path, seed: int) -> list[dict]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import confusion_matrix

    src = load_source(str(data), val_split=run.config.data.val_split, seed=run.config.train.seed)  # the run's split
    tr, te = src.splits["train"], src.splits["test"]
    to_tensor = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).contiguous()  # noqa: E731
    f_train, f_test = penultimate(run, to_tensor(tr.array)), penultimate(run, to_tensor(te.array))
    rows = []
    variants = {"head refit (no SMOTE)": (f_train, tr.labels),
                "SMOTE (features) + head refit": resample_features(f_train, tr.labels, "smote", 5, seed)}
    for name, (fx, fy) in variants.items():
        t0 = time.perf_counter()
        head = LogisticRegression(max_iter=2000, C=1.0).fit(fx, fy)
        cm = confusion_matrix(te.labels, head.predict(f_test), labels=list(range(10)))
        row = mnist_row(name, cm.tolist(), round(time.perf_counter() - t0, 1))
        row["train_features"] = int(len(fy))
        rows.append(row)
    return rows


def bench_mnist(tmp: Path, args) -> dict:
    data = tmp / "mnist_lt.npz"
    info = long_tailed_mnist(data, args.majority, args.minority, args.seed)
    n_train = sum(info["train_counts"]) * 0.8
    minority_train = min(info["train_counts"][5:]) * 0.8
    under_epochs = int(round(args.epochs * n_train / (10 * minority_train)))  # same number of steps
    runs = {"none": [], "oversample": ["oversample"], "undersample": ["undersample"],
            "class_weights (inverse)": ["class_weights"], "focal (gamma 2)": ["focal"], "SMOTE (pixels)": ["smote"]}
    rows, none_run = [], None
    for name, balance in runs.items():
        epochs = under_epochs if balance == ["undersample"] else args.epochs
        run = train(data, tmp / f"mnist_{len(rows)}", balance, epochs, args.batch_size)
        rows.append({**mnist_row(name, run.metrics["test"]["confusion_matrix"], run.meta["bench_wall_s"]),
                     "epochs": epochs})
        print(rows[-1], flush=True)
        none_run = none_run or run
    rows += smote_features_rows(none_run, data, args.seed)
    print(rows[-2:], flush=True)
    return {"data": info, "undersample_epochs": under_epochs, "rows": rows}


def bench_cactus(tmp: Path, args) -> dict:
    data = tmp / "cactus.npz"
    info = cactus_npz(data, args.cactus_train, args.seed)
    runs = {"threshold": ["threshold"], "oversample": ["oversample"], "undersample": ["undersample"],
            "class_weights (inverse)": ["class_weights"], "focal (gamma 2)": ["focal"], "SMOTE (pixels)": ["smote"]}
    rows = []
    for name, balance in runs.items():
        run = train(data, tmp / f"cactus_{len(rows)}", balance, args.cactus_epochs, args.batch_size)
        test = run.metrics["test"]
        row = {"treatment": name, "roc_auc": test["roc_auc"], "pr_auc": test["pr_auc"],
               "balanced_accuracy": test["balanced_accuracy"], "accuracy": test["accuracy"],
               "wall_s": run.meta["bench_wall_s"]}
        if name == "threshold":
            row["threshold"] = run.metrics["threshold"]["value"]
            run.task.decision_threshold = None  # the same model with argmax: the untreated row
            rows.append({**_cactus_eval(run, data), "treatment": "none", "wall_s": run.meta["bench_wall_s"]})
        rows.append(row)
        print(rows[-1], flush=True)
    return {"data": info, "rows": rows}


def _cactus_eval(run: cnnlab.Run, data: Path) -> dict:
    result = run.evaluate(str(data), split="test")
    return {k: result[k] for k in ("roc_auc", "pr_auc", "balanced_accuracy", "accuracy")}


def write_markdown(result: dict, path: Path) -> None:
    m, c = result["mnist"], result["cactus"]
    base = next(r for r in m["rows"] if r["treatment"] == "none")
    lines = [f"# Imbalanced data (`benchmarks/bench_imbalance.py`, {result['when']})", "",
             f"Machine: {result['machine']}; load before: {result['load_before']}; after: {result['load_after']}; "
             f"total {result['total_s']:.0f} s.", "",
             f"## Long-tailed MNIST (train counts {m['data']['train_counts']}, 20% of it held out as val; "
             f"test: the untouched {m['data']['test_count']} MNIST test images)", "",
             "| treatment | epochs | balanced accuracy | minority recall (5-9) | majority recall (0-4) "
             "| vs none (bal. acc.) | wall s |", "|---|---|---|---|---|---|---|"]
    for r in m["rows"]:
        lines.append(f"| {r['treatment']} | {r.get('epochs', '-')} | {r['balanced_accuracy']:.4f} | "
                     f"{r['minority_recall']:.4f} | {r['majority_recall']:.4f} | "
                     f"{r['balanced_accuracy'] - base['balanced_accuracy']:+.4f} | {r['wall_s']} |")
    lines += ["", f"## Aerial cactus (train counts {c['data']['train_counts']} for classes "
              f"{c['data']['class_names']}, test {c['data']['test_counts']})", "",
              "| treatment | ROC AUC | PR AUC | balanced accuracy | accuracy | wall s |", "|---|---|---|---|---|---|"]
    for r in c["rows"]:
        lines.append(f"| {r['treatment']} | {r['roc_auc']:.4f} | {r['pr_auc']:.4f} | {r['balanced_accuracy']:.4f} | "
                     f"{r['accuracy']:.4f} | {r['wall_s']} |")
    lines += ["", "Settings: " + json.dumps(result["settings"])]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--majority", type=int, default=400, help="training images kept per class 0-4")
    p.add_argument("--minority", type=int, default=8, help="training images kept per class 5-9")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--cactus-train", type=int, default=1200)
    p.add_argument("--cactus-epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    load = lambda: subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()  # noqa: E731
    result = {"when": time.strftime("%Y-%m-%d %H:%M"), "load_before": load(), "settings": vars(args),
              "machine": f"{os.cpu_count()} CPU cores, torch {torch.__version__}, {torch.get_num_threads()} threads"}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        result["mnist"] = bench_mnist(Path(tmp), args)
        result["cactus"] = bench_cactus(Path(tmp), args)
    result["total_s"] = time.perf_counter() - t0
    result["load_after"] = load()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "imbalance.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    write_markdown(result, RESULTS / "imbalance.md")
    print((RESULTS / "imbalance.md").read_text())


if __name__ == "__main__":
    main()
