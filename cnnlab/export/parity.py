"""The parity gate: the exported model against the PyTorch model (fp32, eager) on real images of the run.

fp32 exports must agree on the top-1 class of at least 99.9% of the checked images with probabilities within
1e-3 of PyTorch's; otherwise the export fails (exit 1) saying which images disagreed. An int8 model is measured
the same way and reported (agreement, largest probability change, accuracy on the whole split), not gated.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnlab.errors import CnnlabError
from cnnlab.runtime import OrtModel, to_probabilities

MIN_AGREEMENT = 0.999
MAX_PROB_DIFF = 1e-3


class ParityError(CnnlabError):
    """The exported model does not compute what the PyTorch model computes (exit code 1, not a user mistake)."""

    exit_code = 1


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


def exported_probabilities(fmt: str, path: Path, spec: dict[str, Any], x: torch.Tensor, preprocess: Any,
                           batch_size: int = 64) -> np.ndarray:
    runner = exported_runner(fmt, path)
    step = batch_size if spec["input"]["shape"][0] is None else 1
    raw = spec["input"]["raw"]
    out = [runner(graph_input(x[lo : lo + step], raw, preprocess)) for lo in range(0, len(x), step)]
    return to_probabilities(np.concatenate(out), spec["output"]["probabilities"], spec["output"]["bce"])


def compare(reference: np.ndarray, exported: np.ndarray, y: torch.Tensor, ids: list[str]) -> dict[str, Any]:
    """Agreement of the top-1 class, the largest probability difference, and both accuracies."""
    ref_top, exp_top = reference.argmax(1), exported.argmax(1)
    labels = y.numpy()
    diff = np.abs(reference - exported).max(axis=1)
    disagree = np.flatnonzero(ref_top != exp_top)
    return {"images": len(labels), "top1_agreement": float((ref_top == exp_top).mean()),
            "max_abs_prob_diff": float(diff.max()) if len(diff) else 0.0,
            "accuracy_torch": float((ref_top == labels).mean()), "accuracy_export": float((exp_top == labels).mean()),
            "disagreeing": [{"id": ids[i], "torch": int(ref_top[i]), "export": int(exp_top[i])}
                            for i in disagree[:10]]}


def gate(result: dict[str, Any], what: str) -> None:
    """Refuse an fp32 export that does not match PyTorch."""
    if result["top1_agreement"] >= MIN_AGREEMENT and result["max_abs_prob_diff"] <= MAX_PROB_DIFF:
        return
    worst = ", ".join(f"{d['id']} (torch {d['torch']}, export {d['export']})" for d in result["disagreeing"][:3])
    raise ParityError(f"the exported {what} does not match PyTorch on {result['images']} images: top-1 agreement "
                      f"{result['top1_agreement']:.2%} (needs {MIN_AGREEMENT:.1%}), largest probability difference "
                      f"{result['max_abs_prob_diff']:.2e} (needs <= {MAX_PROB_DIFF:g})"
                      + (f"; disagreeing: {worst}" if worst else "")
                      + "; nothing was written (an earlier export is left as it was)")
