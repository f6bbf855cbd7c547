"""Running an exported model (cnnlab.export): ONNX Runtime sessions, and `OnnxPredictor` for
`cnnlab predict --backend onnx`.

ONNX Runtime's CPU provider, or its CUDA provider when installed and a GPU is there. `OnnxPredictor` offers what
inference needs of a Predictor (`predict`), so predict and its CSV do not change with the backend.
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


class OnnxPredictor:
    """Predicts with RUN/export/model.onnx as the torch Predictor does (the same predictions: the task's exporter
    reads the graph's output back, e.g. as class probabilities; the task decides from them as it does for torch)."""

    def __init__(self, path: Path, spec: dict[str, Any], preprocess: Any, exporter: Any) -> None:
        self.model = OrtModel(path)
        self.spec, self.preprocess, self.exporter = spec, preprocess, exporter
        self.num_outputs = len(spec["classes"])

    def batch_input(self, x: torch.Tensor) -> np.ndarray:
        """uint8 (B, C, H, W) -> what the graph takes: uint8 NHWC (raw input) or normalized float NCHW."""
        if self.spec["input"]["raw"]:  # in numpy: torch's copy would leave OpenMP threads spinning against ORT's
            return np.ascontiguousarray(x.numpy().transpose(0, 2, 3, 1))
        return self.preprocess(x).contiguous().numpy().astype(np.float32)

    def predict(self, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        out = []
        fixed = self.spec["input"]["shape"][0]
        step = batch_size if fixed is None else int(fixed)
        for lo in range(0, len(x), step):
            raw = self.model(self.batch_input(x[lo : lo + step]))
            out.append(torch.from_numpy(self.exporter.predictions(raw, self.spec["output"]).astype(np.float32)))
        return torch.cat(out) if out else torch.empty(0, self.num_outputs)
