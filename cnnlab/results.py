"""The end of a run: final metrics of the best weights (metrics.json), the decision threshold, the last lines."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from cnnlab.config import Config
from cnnlab.data import balance
from cnnlab.data.stream import make_batches
from cnnlab.runs import RunDir
from cnnlab.train.callbacks import resolve_mode
from cnnlab.train.checkpoint import load_weights_file
from cnnlab.train.trainer import Trainer


def final_metrics(cfg: Config, trainer: Trainer, model: nn.Module, run: RunDir, splits: dict[str, Any],
                  has_val: bool, wall: float) -> dict[str, Any]:
    """Final-epoch logs, the best epoch on the monitor, and val / test metrics of the best weights."""
    history = trainer.history
    monitor = cfg.callbacks.monitor
    best_path = run.file(run.BEST)
    if best_path.exists():
        model.load_state_dict(load_weights_file(best_path))
    out: dict[str, Any] = {"monitor": monitor, "epochs_run": len(history),
                           "train_time_s": round(sum(h.get("time", 0) for h in history), 3),
                           "wall_time_s": round(wall, 3), "final": history[-1] if history else {}}
    values = [h.get(monitor) for h in history]
    if any(v is not None for v in values):
        pick = max if resolve_mode(monitor, "auto") == "max" else min
        best_epoch = pick((i for i, v in enumerate(values) if v is not None), key=lambda i: values[i])
        out["best"] = {"epoch": best_epoch + 1, monitor: values[best_epoch]}
    if "threshold" in cfg.balance.methods:
        val = make_batches(splits["val"], cfg.train.eval_batch_size, False, 0, trainer.device, cfg.data.workers)
        out["threshold"] = pick_threshold(trainer, val)
    for split in ("val", "test"):
        if split in splits:
            batches = make_batches(splits[split], cfg.train.eval_batch_size, False, 0, trainer.device,
                                   cfg.data.workers)
            logs, cm = trainer.evaluate(batches, prefix="")
            out[split] = {**logs, "confusion_matrix": cm}
    return out


def pick_threshold(trainer: Trainer, val: Any) -> dict[str, Any]:
    """Two classes: the threshold on P(class 1) maximizing val balanced accuracy (val: batches of a split in
    memory or streamed); used from now on to decide."""
    pred = trainer.predictor
    p, y = [], []
    for xb, yb in val.batches():
        p.append(pred.probabilities(pred.logits(xb))[:, 1].float().cpu())
        y.append(yb.cpu())
    value, score = balance.select_threshold(torch.cat(y).numpy(), torch.cat(p).numpy())
    trainer.predictor.decision_threshold = value
    return {"value": value, "chosen_on": "val", "criterion": "balanced_accuracy", "val_balanced_accuracy": score}


def print_final(run: Any, log: Callable[[str], None]) -> None:
    m = run.metrics
    if "threshold" in m:
        t = m["threshold"]
        log(f"balance: decision threshold P({run.class_names[1]}) >= {t['value']:.4f} (val balanced accuracy "
            f"{t['val_balanced_accuracy']:.4f}); evaluate and predict use it")
    keys = ["accuracy"] + (["balanced_accuracy", "f1"] if m.get("balance", {}).get("imbalanced") else [])
    parts = [f"{s} " + " ".join(f"{k} {m[s][k]:.4f}" for k in keys + ["roc_auc", "pr_auc"] if k in m[s])
             for s in ("val", "test") if s in m]
    log(f"Done in {m['wall_time_s']:.1f}s ({m['epochs_run']} epochs). Best weights: " + ", ".join(parts))
    log(f"Run folder: {run.dir}")
