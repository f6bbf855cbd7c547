"""The full training state at a step boundary: capture it, and restore it so a run continues bit for bit.

A state holds the position to continue from (epoch, step within the epoch), the model weights, optimizer,
schedule, grad scaler, every callback's state, the history, the epoch's partial train-metric accumulators, and
the torch / CUDA / numpy / Python RNG states. It holds tensors and plain Python values only, so it is read back
with torch.load(weights_only=True). The same dict serves a resumed run (from last_state.pt) and a NaN rollback
(from the in-memory copy). A distributed run also saves every rank's RNG states (`rng_by_rank`), so it resumes
exactly with the same world size.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from cnnlab.errors import CnnlabError
from cnnlab.train import dist

if TYPE_CHECKING:
    from cnnlab.train.trainer import Trainer

FORMAT = 2  # version of the state dict layout; 1 was the weights-less epoch state of the first release


def capture_rng() -> dict[str, Any]:
    """Global RNG states: torch CPU (dropout, init), CUDA (when in use), numpy and Python `random`."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Put back the RNG states captured by capture_rng."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def capture_state(trainer: Trainer, epoch: int, step: int, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything needed to continue training at step `step` of epoch `epoch` (0-based; step 0 = epoch start).

    The returned tensors may alias live ones: torch.save it, or copy.deepcopy it to keep it in memory.
    """
    metrics = trainer.train_metrics
    if step > 0 and dist.active():
        metrics = metrics.reduced_copy()  # the epoch so far over every rank (rank 0 continues it on a resume)
    return {
        "format": FORMAT, "epoch": epoch, "step": step, "global_step": trainer.global_step,
        "model": {k: v.detach() for k, v in trainer.model.state_dict().items()},
        "optimizer": trainer.optimizer.state_dict(),
        "scheduler": trainer.scheduler.state_dict() if trainer.scheduler is not None else None,
        "scaler": trainer.scaler.state_dict() if trainer.scaler is not None else None,
        "callbacks": [cb.state_dict() for cb in trainer.callbacks],
        "callback_names": [type(cb).__name__ for cb in trainer.callbacks],
        "history": [dict(h) for h in trainer.history],
        "train_metrics": metrics.state_dict() if (step > 0 and metrics is not None) else None,
        "stop_training": bool(trainer.stop_training),
        "micro_batches": trainer.micro_batches,
        "rng": capture_rng(),
        **({"rng_by_rank": dist.all_gather_object(capture_rng()), "world_size": dist.world_size()}
           if dist.active() else {}),
        **(extra or {}),
    }


def check_state(state: Any, where: str) -> dict[str, Any]:
    """Refuse a file that is not a cnnlab training state of this format, with a message saying what to do."""
    if not isinstance(state, dict) or "optimizer" not in state:
        raise CnnlabError(f"{where} is not a cnnlab training state")
    if state.get("format") != FORMAT or "model" not in state:
        raise CnnlabError(f"{where} was written by an older cnnlab (state format {state.get('format', 1)}) and "
                          "cannot be resumed exactly; start the run again")
    return state


def restore_state(trainer: Trainer, state: dict[str, Any], rng: bool = True) -> tuple[int, int]:
    """Load `state` into the trainer (weights, optimizer, schedule, scaler, callbacks, history, RNG).

    The epoch's partial train metrics go to `trainer.resume_metrics`, picked up when that epoch starts.
    Pass a copy when the state must stay untouched (the optimizer keeps references to its tensors).

    Returns:
        (epoch, step): where training continues.
    """
    names = [type(cb).__name__ for cb in trainer.callbacks]
    saved = state.get("callback_names", names)
    if saved != names:
        raise CnnlabError(f"the run was saved with callbacks {saved} but is resumed with {names}: pass the same "
                          "callbacks (and config) to resume")
    trainer.model.load_state_dict(state["model"])
    trainer.optimizer.load_state_dict(state["optimizer"])
    if trainer.scheduler is not None and state.get("scheduler") is not None:
        trainer.scheduler.load_state_dict(state["scheduler"])
    if trainer.scaler is not None and state.get("scaler"):
        trainer.scaler.load_state_dict(state["scaler"])
    for cb, cb_state in zip(trainer.callbacks, state["callbacks"]):
        cb.load_state_dict(cb_state)
    trainer.history = [dict(h) for h in state["history"]]
    trainer.global_step = int(state["global_step"])
    trainer.resume_metrics = state.get("train_metrics")
    trainer.micro_batches = max(trainer.micro_batches, int(state.get("micro_batches", 1)))
    if rng:
        by_rank = state.get("rng_by_rank")
        same_world = by_rank is not None and len(by_rank) == dist.world_size()
        restore_rng(by_rank[dist.rank()] if same_world else state["rng"])
    return int(state["epoch"]), int(state["step"])
