"""The parity check: the exported model run on real images of the run, for comparison with the PyTorch model
(fp32, eager). What "the same" means is the task's (a classifier's top-1 agreement and probability difference:
cnnlab.tasks.classification.outputs); an int8 model is measured the same way and reported, not gated.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnlab.errors import ParityError
from cnnlab.runtime import OrtModel

__all__ = ["ParityError", "exported_predictions", "exported_runner", "graph_input"]


def graph_input(x: torch.Tensor, raw: bool, preprocess: Any) -> torch.Tensor:
    """uint8 (N, C, H, W) -> what the graph takes."""
    return x.permute(0, 2, 3, 1).contiguous() if raw else preprocess(x).contiguous()


def exported_runner(fmt: str, path: Path):
    """A function batch -> numpy output for the exported file."""
    if fmt == "onnx":
        model = OrtModel(path)
        return lambda batch: model(batch.numpy())
    with warnings.catch_warnings():  # torch.jit.load warns that TorchScript is deprecated: the user chose it
        warnings.simplefilter("ignore")
        module = torch.jit.load(str(path)) if fmt == "torchscript" else torch.export.load(str(path)).module()

    def run(batch: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return module(batch).numpy()

    return run


def exported_predictions(fmt: str, path: Path, spec: dict[str, Any], x: torch.Tensor, preprocess: Any,
                         exporter: Any, batch_size: int = 64) -> np.ndarray:
    """The exported model's predictions (the task's reading of its output, e.g. class probabilities) on uint8
    images x (N, C, H, W)."""
    runner = exported_runner(fmt, path)
    step = batch_size if spec["input"]["shape"][0] is None else 1
    raw = spec["input"]["raw"]
    out = [runner(graph_input(x[lo : lo + step], raw, preprocess)) for lo in range(0, len(x), step)]
    return exporter.predictions(np.concatenate(out), spec["output"])
