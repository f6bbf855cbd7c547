"""The end of a run: final metrics of the best weights (metrics.json), the task's fitted decision (a classifier's
threshold), the last lines."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from cnnlab.config import Config
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
    task = trainer.task
    decision = task.fit_decision(trainer.predictor, lambda: task.make_batches(
        splits["val"], cfg.train.eval_batch_size, False, 0, trainer.device, cfg.data.workers))
    if decision is not None:
        out["threshold"] = decision
    for split in ("val", "test"):
        if split in splits:
            batches = task.make_batches(splits[split], cfg.train.eval_batch_size, False, 0, trainer.device,
                                        cfg.data.workers)
            logs, artefacts = trainer.evaluate(batches, prefix="")
            out[split] = {**logs, **artefacts}
    return out


def print_final(run: Any, log: Callable[[str], None]) -> None:
    m = run.metrics
    for line in run.predictor.task.final_notes(m):
        log(line)
    keys = run.predictor.task.final_keys(m)
    parts = [f"{s} " + " ".join(f"{k} {m[s][k]:.4f}" for k in keys if k in m[s]) for s in ("val", "test") if s in m]
    log(f"Done in {m['wall_time_s']:.1f}s ({m['epochs_run']} epochs, {m['train_time_s']:.1f}s of them training). "
        "Best weights: " + ", ".join(parts))
    log(f"Run folder: {run.dir}")
