"""Running an exported model (cnnlab.export): ONNX Runtime sessions, and `OnnxPredictor` for
`cnnlab predict --backend onnx`.

ONNX Runtime's CPU provider, or its CUDA provider when installed and a GPU is there. `OnnxPredictor` offers what
inference needs of a Predictor (`predict_proba`, `decide`), so predict and its CSV do not change with the backend.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnlab.errors import CnnlabError


def providers() -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


class OrtModel:
    """One ONNX Runtime session of an exported model: numpy batch in, numpy output out."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise CnnlabError("ONNX Runtime is not installed: pip install onnxruntime") from None
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3  # errors only
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers())
        except Exception as e:  # noqa: BLE001  (a damaged or foreign file)
            raise CnnlabError(f"ONNX Runtime cannot load {path}: {str(e).splitlines()[0][:200]}") from None
        self.input = self.session.get_inputs()[0].name

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input: batch})[0]


def to_probabilities(out: np.ndarray, is_probabilities: bool, bce: bool) -> np.ndarray:
    """An exported graph's output as class probabilities (the Predictor's rule)."""
    if is_probabilities:
        return out.astype(np.float64)
    z = out.astype(np.float64)
    if bce:
        p = 1 / (1 + np.exp(-z))
        return p / np.clip(p.sum(axis=1, keepdims=True), 1e-12, None)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class OnnxPredictor:
    """Predicts with RUN/export/model.onnx as the torch Predictor does (same probabilities, same decision)."""

    optimizer = None

    def __init__(self, path: Path, spec: dict[str, Any], preprocess: Any, decision_threshold: float | None) -> None:
        self.model = OrtModel(path)
        self.spec, self.preprocess, self.decision_threshold = spec, preprocess, decision_threshold
        self.num_classes = len(spec["classes"])

    def batch_input(self, x: torch.Tensor) -> np.ndarray:
        """uint8 (B, C, H, W) -> what the graph takes: uint8 NHWC (raw input) or normalized float NCHW."""
        if self.spec["input"]["raw"]:  # in numpy: torch's copy would leave OpenMP threads spinning against ORT's
            return np.ascontiguousarray(x.numpy().transpose(0, 2, 3, 1))
        return self.preprocess(x).contiguous().numpy().astype(np.float32)

    def predict_proba(self, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        out = []
        fixed = self.spec["input"]["shape"][0]
        step = batch_size if fixed is None else int(fixed)
        for lo in range(0, len(x), step):
            raw = self.model(self.batch_input(x[lo : lo + step]))
            out.append(torch.from_numpy(to_probabilities(raw, self.spec["output"]["probabilities"],
                                                          self.spec["output"]["bce"]).astype(np.float32)))
        return torch.cat(out) if out else torch.empty(0, self.num_classes)

    def decide(self, probs: torch.Tensor) -> torch.Tensor:
        if self.decision_threshold is not None and probs.shape[1] == 2:
            return (probs[:, 1] >= self.decision_threshold).long()
        return probs.argmax(dim=1)
