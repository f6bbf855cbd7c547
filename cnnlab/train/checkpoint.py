"""Checkpoint files: weights as safetensors, training state with torch.save, both written atomically.

A write goes to a temporary file in the same folder, is fsynced, then renamed over the old file, so a crash
while saving leaves the previous checkpoint intact. Training state is read back with weights_only=True:
a file that would need to run code to load is refused.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from cnnlab.errors import CnnlabError


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException as e:  # also Ctrl-C / SystemExit mid-write: never leave the temporary file behind
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if not isinstance(e, OSError):
            raise
        raise CnnlabError(f"could not write {path} ({e.strerror or e}); the previous {path.name} is kept. "
                          "Free disk space or choose another --out") from None


def save_weights(model: nn.Module, path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Model weights (parameters and buffers) as a safetensors file."""
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    _atomic_write(Path(path), lambda tmp: save_file(state, tmp, metadata=metadata))


def load_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except Exception as e:  # noqa: BLE001
        raise CnnlabError(f"cannot read weights from {path}: {e}") from None


def save_state(state: dict[str, Any], path: str | Path) -> None:
    """Optimizer / scheduler / RNG / callback state (tensors and plain Python values only)."""
    _atomic_write(Path(path), lambda tmp: torch.save(state, tmp))


def load_state(path: str | Path) -> dict[str, Any]:
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CnnlabError(f"refusing to load {path}: it holds objects that would run code when loaded "
                          f"({str(e).splitlines()[0][:160]})") from None
    except (OSError, RuntimeError, EOFError) as e:
        raise CnnlabError(f"cannot read checkpoint {path}: {e}") from None
