"""What a run records about where it ran: versions, platform, device, precision, threads and the command."""

from __future__ import annotations

import importlib.metadata
import platform
import sys
from datetime import datetime
from typing import Any

import numpy as np
import torch

from cnnlab import __version__


def dist_version(name: str) -> str:
    """An installed package's version from its metadata, without importing it (timm and torchvision take seconds)."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def environment_info(device: torch.device, precision: str) -> dict[str, Any]:
    return {
        "cnnlab": __version__, "python": platform.python_version(), "torch": str(torch.__version__),
        "torchvision": dist_version("torchvision"), "timm": dist_version("timm"), "numpy": np.__version__,
        "platform": platform.platform(), "device": str(device), "precision": precision,
        "threads": torch.get_num_threads(), "command": " ".join(sys.argv),
        "started": datetime.now().isoformat(timespec="seconds"),
    }
