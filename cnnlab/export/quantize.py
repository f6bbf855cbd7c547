"""int8 ONNX models with ONNX Runtime's quantization: static (QDQ, per-channel weights, activations calibrated on
training images) or dynamic (weights only, activations quantized at run time)."""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from pathlib import Path

import numpy as np

from cnnlab.errors import CnnlabError

MODES = ("int8", "int8-dynamic")


def quantize(path: Path, out: Path, mode: str, calibration: list[np.ndarray]) -> Path:
    """Write the int8 model of `path` to `out`. `calibration`: batches in the graph's input format (static)."""
    if mode not in MODES:
        raise CnnlabError(f"unknown --quantize '{mode}': choose {', '.join(MODES)}")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer warns on the root logger about the uint8 input it leaves alone
    try:
        return _quantize(path, out, mode, calibration)
    finally:
        root.setLevel(level)


def _quantize(path: Path, out: Path, mode: str, calibration: list[np.ndarray]) -> Path:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(path), str(prepared), skip_symbolic_shape=True)
        if mode == "int8-dynamic":
            quantize_dynamic(str(prepared), str(out), weight_type=QuantType.QInt8, per_channel=True)
            return out

        class Batches(CalibrationDataReader):
            def __init__(self) -> None:
                self.items = iter([{"images": b} for b in calibration])

            def get_next(self):
                return next(self.items, None)

        quantize_static(str(prepared), str(out), Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return out
