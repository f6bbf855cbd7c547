"""Which training defaults get the seed CNN to 99% on MNIST fastest? An ablation with the plain PyTorch peer.

    python benchmarks/ablate_defaults.py [--epochs 3] [--configs base,he,...] [--seeds 0]

Honest protocol: the decision metric is accuracy on a held-out validation split (the last 10,000 training
images, never trained on); test accuracy is recorded alongside for information only. Factors: init (PyTorch
default vs He-normal), schedule (constant Adam 1e-3 vs one-cycle with max lr 3e-3 / 1e-2), precision
(fp32 vs bf16 autocast) and batch size (128 vs 256). Each config runs in this process, one after another.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import Dataset, Split, hardware_info, load_mnist, write_results  # noqa: E402

CONFIGS: dict[str, dict[str, Any]] = {
    "base_fp32": {"init": "default", "schedule": "constant", "precision": "fp32", "batch_size": 128},
    "base": {"init": "default", "schedule": "constant", "precision": "bf16", "batch_size": 128},
    "he": {"init": "he", "schedule": "constant", "precision": "bf16", "batch_size": 128},
    "oc3e-3": {
        "init": "default",
        "schedule": "onecycle",
        "max_lr": 3e-3,
        "precision": "bf16",
        "batch_size": 128,
    },
    "he_oc3e-3": {
        "init": "he",
        "schedule": "onecycle",
        "max_lr": 3e-3,
        "precision": "bf16",
        "batch_size": 128,
    },
    "he_oc1e-2": {
        "init": "he",
        "schedule": "onecycle",
        "max_lr": 1e-2,
        "precision": "bf16",
        "batch_size": 128,
    },
    "he_oc3e-3_b256": {
        "init": "he",
        "schedule": "onecycle",
        "max_lr": 3e-3,
        "precision": "bf16",
        "batch_size": 256,
    },
    "he_oc1e-2_b256": {
        "init": "he",
        "schedule": "onecycle",
        "max_lr": 1e-2,
        "precision": "bf16",
        "batch_size": 256,
    },
    "he_oc3e-3_e2": {
        "init": "he",
        "schedule": "onecycle",
        "max_lr": 3e-3,
        "precision": "bf16",
        "batch_size": 128,
        "epochs": 2,
    },
    "he_oc3e-3_b256_e2": {
        "init": "he",
        "schedule": "onecycle",
        "max_lr": 3e-3,
        "precision": "bf16",
        "batch_size": 256,
        "epochs": 2,
    },
    "he_oc3e-3_fp32": {
        "init": "he",
        "schedule": "onecycle",
        "max_lr": 3e-3,
        "precision": "fp32",
        "batch_size": 128,
    },
}


def holdout(data: Dataset, n_val: int = 10_000) -> tuple[Dataset, Split]:
    """Train on all but the last ``n_val`` training images; those become the validation split."""
    tr = Split(data.train.x[:-n_val], data.train.y[:-n_val])
    val = Split(data.train.x[-n_val:], data.train.y[-n_val:])
    return Dataset(data.name, tr, data.test), val


def run(configs: list[str], epochs: int, seeds: list[int], threads: int) -> dict[str, Any]:
    """Train every (config, seed) for ``epochs`` epochs; print one line per run."""
    import torch

    from benchmarks.peers import torch_loop

    torch.set_num_threads(threads)
    data, val = holdout(load_mnist())
    results: dict[str, Any] = {}
    for name in configs:
        cfg = CONFIGS[name]
        n_epochs = cfg.get("epochs", epochs)  # one-cycle configs may fix their own (shorter) length
        kwargs = {k: v for k, v in cfg.items() if k != "epochs"}
        for seed in seeds:
            hist = torch_loop.train(data, "seed_cnn", n_epochs, lr=1e-3, seed=seed, val=val, **kwargs)
            hist["load_average"] = list(os.getloadavg())
            results[f"{name}/s{seed}"] = {"config": cfg, "seed": seed, **hist}
            print(
                f"{name:16s} s{seed} val {' '.join(f'{a:.4f}' for a in hist['val_acc'])} "
                f"test {' '.join(f'{a:.4f}' for a in hist['test_acc'])} "
                f"s/epoch {' '.join(f'{t:.1f}' for t in hist['epoch_times'])}",
                flush=True,
            )
    return results


def markdown(results: dict[str, Any], epochs: int) -> str:
    """One row per run: val and test accuracy after each epoch, training seconds per epoch."""
    head = " | ".join(f"val@{e}" for e in range(1, epochs + 1))
    lines = [
        "# seed_cnn / MNIST defaults ablation (plain PyTorch loop; train 50k, val = last 10k of train)",
        "",
        f"| run | init | schedule | max lr | precision | batch | {head} | test at end | s/epoch |",
        "|---|---|---|---|---|---|" + "---|" * epochs + "---|---|",
    ]
    for key, r in results.items():
        c = r["config"]
        vals = " | ".join(f"{a:.4f}" for a in r["val_acc"] + [float("nan")] * (epochs - len(r["val_acc"])))
        sec = sorted(r["epoch_times"])[len(r["epoch_times"]) // 2]
        lines.append(
            f"| {key} | {c['init']} | {c['schedule']} | {c.get('max_lr', 1e-3):g} | {c['precision']} "
            f"| {c['batch_size']} | {vals} | {r['test_acc'][-1]:.4f} (after {len(r['test_acc'])}) "
            f"| {sec:.1f} |"
        )
    lines += ["", "Epoch times are on a shared 2-core machine under other users' load: noisy, median shown."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--seeds", default="0")
    p.add_argument("--name", default="ablate_mnist_defaults")
    p.add_argument(
        "--threads",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="torch threads; 1 wastes far less CPU when other jobs oversubscribe the cores",
    )
    args = p.parse_args(argv)
    configs = [c for c in args.configs.split(",") if c]
    results = run(configs, args.epochs, [int(s) for s in args.seeds.split(",")], args.threads)
    payload = {"hardware": hardware_info(), "epochs": args.epochs, "threads": args.threads, "runs": results}
    json_path, md_path = write_results(args.name, payload, markdown(results, args.epochs))
    print(md_path.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
