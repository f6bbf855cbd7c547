"""Writing the exported module: ONNX (torch.onnx's dynamo exporter, class names in the metadata), TorchScript,
or a torch.export ExportedProgram; and model.json, which tells a client how to call it."""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnlab.errors import CnnlabError

FORMATS = {"onnx": "model.onnx", "torchscript": "model.torchscript.pt", "exported-program": "model.pt2"}


def dynamic_shapes(example: torch.Tensor, batch: bool, size: bool, raw: bool) -> dict[str, Any] | None:
    """torch.export dims of the `images` input: the batch, and H / W when asked."""
    dims: dict[int, Any] = {}
    if batch:
        dims[0] = torch.export.Dim("batch", min=1, max=65536)
    if size:
        h, w = (1, 2) if raw else (2, 3)
        dims[h], dims[w] = torch.export.Dim("height", min=8, max=4096), torch.export.Dim("width", min=8, max=4096)
    return {"images": dims} if dims else None


def first_line(error: BaseException) -> str:
    lines = [line for line in str(error).splitlines() if line.strip()]
    return (lines[0] if lines else type(error).__name__)[:240]


@contextlib.contextmanager
def quiet_exporter():
    """torch.onnx prints its progress and warns about every op it decomposes; a user needs none of it."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def write(module: nn.Module, example: torch.Tensor, fmt: str, folder: Path, *, batch: bool, size: bool, raw: bool,
          opset: int | None, metadata: dict[str, str]) -> Path:
    """The module in `fmt` under `folder`; an export that fails (an op, a data-dependent shape) is one clear line."""
    if fmt not in FORMATS:
        raise CnnlabError(f"unknown --format '{fmt}': choose {', '.join(FORMATS)}")
    path = folder / FORMATS[fmt]
    shapes = dynamic_shapes(example, batch, size, raw)
    try:
        with quiet_exporter(), torch.no_grad():
            if fmt == "onnx":
                write_onnx(module, example, path, shapes, opset, metadata)
            elif fmt == "torchscript":
                traced = torch.jit.trace(module, (example,), check_trace=False)
                torch.jit.save(traced, str(path), _extra_files={"cnnlab.json": json.dumps(metadata)})
            else:
                program = torch.export.export(module, (example,), dynamic_shapes=shapes)
                torch.export.save(program, str(path), extra_files={"cnnlab.json": json.dumps(metadata)})
    except CnnlabError:
        raise
    except Exception as e:  # noqa: BLE001  (the exporters raise many kinds; the user needs the first line)
        hint = " (fixed image size: drop --dynamic-size)" if size else ""
        raise CnnlabError(f"cannot export this model to {fmt}{hint}: {first_line(e)}; try another --format") from None
    return path


def write_onnx(module: nn.Module, example: torch.Tensor, path: Path, shapes: dict[str, Any] | None,
               opset: int | None, metadata: dict[str, str]) -> None:
    import onnx

    program = torch.onnx.export(module, (example,), dynamo=True, dynamic_shapes=shapes, opset_version=opset,
                                input_names=["images"], output_names=["output"], verbose=False)
    program.save(str(path), external_data=False)
    model = onnx.load(str(path))
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))


def spec(run: Any, fmt: str, path: Path, *, raw: bool, output: dict[str, Any], batch: bool, size: bool,
         opset: int | None, norm: dict[str, Any]) -> dict[str, Any]:
    """model.json: what the graph takes and returns, and three lines that call it."""
    d = run.config.data
    h = w = d.image_size
    shape = [None if batch else 1, *([None if size else h, None if size else w, d.channels] if raw else
                                     [d.channels, None if size else h, None if size else w])]
    example = ("import onnxruntime as ort, numpy as np\n"
               f"session = ort.InferenceSession('{path.name}')\n"
               + (f"probs = session.run(None, {{'images': images_uint8_nhwc}})[0]  # (N, {h}, {w}, {d.channels})"
                  if raw else "out = session.run(None, {'images': normalized_float32_nchw})[0]"))
    return {
        "format": fmt, "file": path.name, "classes": run.class_names,
        "input": {"name": "images", "raw": raw, "layout": "NHWC" if raw else "NCHW",
                  "dtype": "uint8" if raw else "float32", "shape": shape, "channels": d.channels,
                  "image_size": [h, w], "resize": d.resize,
                  "normalization": norm if not raw else {**norm, "applied": "inside the graph"}},
        "output": output,
        "decision_threshold": getattr(run.task, "decision_threshold", None), "opset": opset,
        "example": example if fmt == "onnx" else None,
    }
