"""Offline machines and `--pretrained`: fail fast (no minutes of download retries) with a message that names the
cache folders and the `--weights FILE` alternative."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator


def hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the Hugging Face hub opens within `timeout` seconds."""
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def offline_unless_reachable() -> Iterator[None]:
    """Hub offline mode while the hub cannot be reached: cached weights still load, missing ones fail at once
    instead of after huggingface_hub's retries (about 30 s)."""
    try:
        from huggingface_hub import constants
    except ImportError:
        yield
        return
    if constants.HF_HUB_OFFLINE or hub_reachable():
        yield
        return
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = False


def offline_weights_message(name: str, error: Exception) -> str:
    try:  # the folder timm's pretrained loading reads (HF_HUB_CACHE / HF_HOME / ~/.cache/huggingface/hub)
        from huggingface_hub.constants import HF_HUB_CACHE as hub
    except ImportError:
        hub = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    torch_hub = os.environ.get("TORCH_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "torch")
    return (
        f"could not get pretrained weights for '{name}' ({type(error).__name__}: {str(error).splitlines()[0][:120]}). "
        f"Without internet, put the file in the Hugging Face hub cache ({hub}) or the torch hub cache "
        f"({torch_hub}), or pass a local checkpoint with --weights FILE (with --strategy, --skip-head is automatic)"
    )
