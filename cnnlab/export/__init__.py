"""Export a run's model so that it cannot be called wrongly, and prove it matches: `cnnlab export RUN`.

    result = cnnlab.export_run("runs/x", raw_input=True)   # RUN/export/model.onnx + model.json, parity checked
    result.parity["top1_agreement"]                           # 1.0

Writes RUN/export/model.<ext> and model.json (cnnlab.runs.RunDir.EXPORT); see cnnlab.export.graph for what is
inside the graph, cnnlab.export.parity for the gate, cnnlab.export.quantize for int8.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnlab.errors import CnnlabError
from cnnlab.export import parity
from cnnlab.export.graph import ExportModule
from cnnlab.export.quantize import quantize
from cnnlab.export.writers import FORMATS, spec, write
from cnnlab.inference import Run, load_images, load_run
from cnnlab.recipe import build_predictor, build_preprocess
from cnnlab.runs import RunDir

__all__ = ["ExportResult", "export_run", "FORMATS"]


@dataclass
class ExportResult:
    """What `export_run` wrote and measured."""

    path: Path
    spec_path: Path
    parity: dict[str, Any]
    int8: dict[str, Any] | None = None
    files: list[Path] = field(default_factory=list)


def export_run(run: str | Path | Run, fmt: str = "onnx", *, raw_input: bool = False, softmax: bool = False,
               dynamic_batch: bool = True, dynamic_size: bool = False, opset: int | None = None,
               quantize_mode: str | None = None, check: int = 256, data: str | None = None) -> ExportResult:
    """Export the run's best weights to RUN/export/, check parity on `check` images of its val (or test) split."""
    if not isinstance(run, Run):
        run = load_run(run, device="cpu")
    if quantize_mode is not None and fmt != "onnx":
        raise CnnlabError("--quantize works on ONNX models: use --format onnx")
    if check < 1:
        raise CnnlabError(f"--check needs at least 1 image, got {check}")
    exporter = run.task.exporter()  # what the graph returns, read back, and checked, for the run's task
    folder = RunDir(run.dir).artifact_dir(RunDir.EXPORT)
    model = run.model.cpu().eval()
    preprocess = build_preprocess(run.config, torch.device("cpu"), False, RunDir(run.dir).read_whitening())
    module = ExportModule(model, preprocess if raw_input else None, exporter.head(softmax)).eval()
    images = load_images(run, data)
    x, y, ids = images.x[:check], images.y[:check], images.ids[:check]
    example = parity.graph_input(x[: 2 if dynamic_batch else 1], raw_input, preprocess)
    norm = {"mode": run.config.data.normalize, "mean": run.config.data.mean, "std": run.config.data.std}
    model_spec = spec(run, fmt, folder / FORMATS[fmt], raw=raw_input, output=exporter.output_spec(softmax),
                      batch=dynamic_batch, size=dynamic_size, opset=opset, norm=norm)
    metadata = {"cnnlab.classes": json.dumps(run.class_names), "cnnlab.spec": json.dumps(model_spec)}
    with staging(folder) as tmp:  # checked there, moved in after the gate: a failing export keeps the good one
        path = write(module, example, fmt, tmp, batch=dynamic_batch, size=dynamic_size, raw=raw_input, opset=opset,
                     metadata=metadata)
        if dynamic_size:
            check_other_size(fmt, path, example, raw_input)
        reference = reference_predictions(run, model, x)
        exported = parity.exported_predictions(fmt, path, model_spec, x, preprocess, exporter)
        result = {**exporter.compare(reference, exported, y, ids), **against_predict(run, exporter, exported, x, y,
                                                                                     ids)}
        model_spec["parity"] = {k: v for k, v in result.items() if k != "disagreeing"}
        spec_path = tmp / RunDir.EXPORT_SPEC
        spec_path.write_text(json.dumps(model_spec, indent=2), encoding="utf-8")
        exporter.gate(result, f"{fmt} model")
        path, spec_path = move_in(path, folder), move_in(spec_path, folder)
    out = ExportResult(path, spec_path, result, files=[path, spec_path])
    if quantize_mode is not None:
        out.int8 = export_int8(run, path, model_spec, images, preprocess, quantize_mode)
        out.files.append(folder / "model.int8.onnx")
    return out


@contextlib.contextmanager
def staging(folder: Path) -> Iterator[Path]:
    """A temporary folder inside the export folder (the same file system, so moving a file in is a rename);
    removed with whatever is left in it."""
    tmp = Path(tempfile.mkdtemp(prefix=".staging-", dir=folder))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def move_in(path: Path, folder: Path) -> Path:
    """Rename a staged file into the export folder, replacing the file of that name."""
    target = folder / path.name
    os.replace(path, target)
    return target


def check_other_size(fmt: str, path: Path, example: torch.Tensor, raw: bool) -> None:
    """--dynamic-size: the exported model must also run at another image size (a dense layer after a flatten
    fixes it, and the exporter does not always notice)."""
    h, w = (1, 2) if raw else (2, 3)
    shape = list(example.shape)
    shape[h], shape[w] = shape[h] + 8, shape[w] + 8
    try:
        parity.exported_runner(fmt, path)(torch.zeros(shape, dtype=example.dtype))
    except Exception as e:  # noqa: BLE001  (ORT / torch raise their own kinds)
        raise CnnlabError(f"cannot export this model to {fmt} with --dynamic-size: its layers fix the image size "
                          f"({str(e).splitlines()[0][-160:]}); drop --dynamic-size") from None


def reference_predictions(run: Run, model: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    """The PyTorch model's predictions (a classifier: probabilities) in fp32 on the CPU (the run's own Predictor may
    autocast to bf16)."""
    reference = build_predictor(run.config, model, run.task, torch.device("cpu"), "fp32",
                                RunDir(run.dir).read_whitening())
    return reference.predict(x, run.config.train.eval_batch_size).double().numpy()


def against_predict(run: Run, exporter: Any, exported: np.ndarray, x: torch.Tensor, y: torch.Tensor,
                    ids: list[str]) -> dict[str, Any]:
    """The gate compares with PyTorch in fp32, what the export computes. `cnnlab predict` uses the run's precision
    on this machine (bf16 where the CPU has native bf16): when that is not fp32, how often it agrees with the export
    too, so a user who compares the two is told why a few borderline images can differ."""
    precision = run.predictor.precision
    out: dict[str, Any] = {"torch_precision": "fp32", "predict_precision": precision}
    if precision != "fp32":
        default = run.predictor.predict(x, run.config.train.eval_batch_size).double().numpy()
        out["predict_top1_agreement"] = exporter.compare(default, exported, y, ids)["top1_agreement"]
    return out


def export_int8(run: Run, path: Path, model_spec: dict[str, Any], images: Any, preprocess: Any,
                mode: str) -> dict[str, Any]:
    """model.int8.onnx, calibrated on training images, and its figures against PyTorch on the whole split."""
    train = load_images(run, None, "train")
    pick = torch.arange(0, len(train.x), max(1, len(train.x) // 256))[:256]
    raw = model_spec["input"]["raw"]
    batches = [parity.graph_input(train.x[pick[i : i + 32]], raw, preprocess).numpy() for i in range(0, len(pick), 32)]
    if model_spec["input"]["shape"][0] is not None:  # a fixed batch of one
        batches = [b[i : i + 1] for b in batches for i in range(len(b))]
    with staging(path.parent) as tmp:  # an int8 model that fails half-way leaves the earlier one in place
        int8_path = quantize(path, tmp / "model.int8.onnx", mode, batches)
        exporter = run.task.exporter()
        reference = reference_predictions(run, run.model, images.x)
        exported = parity.exported_predictions("onnx", int8_path, model_spec, images.x, preprocess, exporter)
        result = exporter.compare(reference, exported, images.y, images.ids)
        int8_path = move_in(int8_path, path.parent)
    result["mode"] = mode
    result["accuracy_change"] = result["accuracy_export"] - result["accuracy_torch"]
    spec_path = path.with_name(RunDir.EXPORT_SPEC)
    saved = json.loads(spec_path.read_text(encoding="utf-8"))
    saved["int8"] = {"file": int8_path.name, **{k: v for k, v in result.items() if k != "disagreeing"}}
    spec_path.write_text(json.dumps(saved, indent=2), encoding="utf-8")
    return result
