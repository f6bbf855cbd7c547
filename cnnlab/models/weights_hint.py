"""The message shown when pretrained weights cannot be downloaded (offline machines)."""

from __future__ import annotations

import os


def offline_weights_message(name: str, error: Exception) -> str:
    hub = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    torch_hub = os.environ.get("TORCH_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "torch")
    return (
        f"could not get pretrained weights for '{name}' ({type(error).__name__}: {str(error).splitlines()[0][:120]}). "
        f"Without internet, put the file in the cache ({hub} or {torch_hub}) or pass a local checkpoint "
        "with --weights FILE"
    )
