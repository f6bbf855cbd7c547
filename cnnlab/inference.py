"""A trained model and its run folder: `Run`, `load_run`, `evaluate` and `predict`.

    run = cnnlab.load_run("runs/...")    # everything back from a run folder alone (a Predictor, no Trainer)
    run.evaluate()                       # val / test metrics and the task's artefacts (a classifier's matrix)
    run.predict(["img1.png", "folder/"]) # a classifier: labels and probabilities
"""

from __future__ import annotations

import csv
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch
from torch import nn

from cnnlab.config import Config
from cnnlab.data.dataset import (
    DecodedSplit,
    ImageGeometry,
    decode_image,
    decode_split,
    set_max_image_pixels,
    unreadable_reason,
)
from cnnlab.data.readers import DataSource, list_images, load_source
from cnnlab.errors import CnnlabError
from cnnlab.models.rewrite import pool_before_activation
from cnnlab.recipe import build_predictor, build_preprocess
from cnnlab.runs import RunDir
from cnnlab.tasks import Task, create_task
from cnnlab.train.checkpoint import load_weights_file
from cnnlab.train.predictor import Predictor
from cnnlab.train.trainer import resolve_device, resolve_precision


class InferenceOnly:
    """`Run.trainer` of a run loaded from its folder: it has no optimizer (evaluate and predict never build one:
    importing torch._dynamo costs about 2 s); its `fit` says how to train from the weights."""

    optimizer = None

    def fit(self, *args: Any, **kwargs: Any) -> None:
        raise CnnlabError("this model was loaded for evaluation and prediction (load_run) and has no optimizer: "
                          "to train from its weights, use cnnlab.fit(..., weights='RUN/best.safetensors')")


@dataclass
class Run:
    """A trained model with its run folder (`dir`), resolved config, classes, history and metrics.

    `predictor` evaluates and predicts (its `task` says what the outputs mean). `trainer` is the Trainer that
    trained the model in this process; a run loaded from its folder has none (InferenceOnly).
    """

    dir: Path | None
    config: Config
    class_names: list[str]
    model: nn.Module
    predictor: Predictor
    trainer: Any = field(default_factory=InferenceOnly)
    history: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def task(self) -> Task:
        return self.predictor.task

    @property
    def geometry(self) -> ImageGeometry:
        d = self.config.data
        return ImageGeometry((d.image_size, d.image_size), d.channels)

    def evaluate(self, data: str | None = None, split: str = "auto") -> dict[str, Any]:
        return evaluate(self, data, split)

    def predict(self, inputs: list[str] | str, csv_path: str | None = None) -> list[dict[str, Any]]:
        return predict(self, inputs, csv_path)


def load_run(path: str | Path, weights: str = "best", device: str | None = None,
             precision: str | None = None) -> Run:
    """Rebuild a trained model from its run folder (config.yaml, classes.json, best or last weights).

    device / precision: where and how to predict (default: the run's own; e.g. precision "fp32" on a bf16 run
    gives exactly what an fp32 export computes)."""
    run = RunDir.open(path)
    cfg = run.read_config()
    cfg.freeze()
    classes = run.read_classes()
    dev = resolve_device(device or cfg.train.device)
    precision = resolve_precision(precision or cfg.train.precision, dev)
    task = create_task(cfg, classes)
    d = cfg.data
    model = task.build_model(cfg, ImageGeometry((d.image_size, d.image_size), d.channels),
                             load_weights=False)  # the run's own weights are loaded below
    model.load_state_dict(load_weights_file(run.weights(weights)))
    pool_before_activation(model)  # exact, and faster (cnnlab.models.rewrite)
    metrics = run.read_metrics()
    task.restore_decision(metrics)
    predictor = build_predictor(cfg, model, task, dev, precision, run.read_whitening())
    return Run(run.path, cfg, classes, model, predictor, metrics=metrics, meta=run.read_meta())


SPLITS = ("auto", "val", "test", "train")


def same_source(a: str, b: str) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return a == b


def open_source(run: Run, data: str | None, split: str) -> tuple[DataSource, str, bool]:
    """(source, split name, same data as the run) for `evaluate` and `report`: `data` (default the run's own) and
    its split (auto: test, else the val split: the data's own, the test split a run validated on, or the held-out
    part of train recreated with the run's seed)."""
    if split not in SPLITS:
        raise CnnlabError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
    d = run.config.data
    data = data or d.source
    same = same_source(data, d.source)
    opts = {"images": d.images, "id_col": d.id_col, "label_col": d.label_col} if same else {}
    set_max_image_pixels(d.max_image_pixels)
    probe = load_source(data, val_split=0.0, seed=run.config.train.seed, **opts)
    if split == "auto":
        split = "test" if "test" in probe.splits else ("val" if (same or "val" in probe.splits) else "train")
    if same and split == "val" and d.val_source == "test":  # the run validated on its test split
        if "test" not in probe.splits:
            raise CnnlabError(f"{data} has no test split, which this run validated on (data.val_source=test)")
        probe.splits["val"] = probe.splits.pop("test")
        return probe, split, same
    src = probe
    if split == "val" and "val" not in probe.splits and same:
        src = load_source(data, val_split=d.val_split, seed=run.config.train.seed, **opts)
    if split not in src.splits:
        raise CnnlabError(f"{data} has no '{split}' split (it has {', '.join(src.splits)}); choose --split "
                          + " or ".join(src.splits))
    return src, split, same


def evaluate(run: Run | str | Path, data: str | None = None, split: str = "auto") -> dict[str, Any]:
    """The task's metrics and artefacts (a classifier: confusion matrix, per-class report) of `run` on a split of
    `data`.

    split "auto": the test split if the data has one; else, for the data the run was trained on, its val split
    (recreated with the run's seed); else every image.
    """
    if not isinstance(run, Run):
        run = load_run(run)
    images = load_images(run, data, split)
    batches = run.task.make_batches(DecodedSplit(images.x, images.y, images.ids), run.config.train.eval_batch_size,
                                    False, 0, run.predictor.device)
    logs, artefacts = run.predictor.evaluate(batches, prefix="")
    return {"data": images.data, "split": images.split, "count": len(images.y), **run.task.report(logs, artefacts),
            "skipped": images.skipped}


@dataclass
class LabelledImages:
    """A decoded split in the run's geometry, labels in the run's class order."""

    data: str
    split: str
    x: torch.Tensor  # (N, C, H, W) uint8
    y: torch.Tensor  # (N,) int64
    ids: list[str]
    skipped: int


def load_images(run: Run, data: str | None = None, split: str = "auto") -> LabelledImages:
    """The images `evaluate` scores: a split of `data` chosen by `open_source`, decoded to the run's geometry."""
    src, split, _ = open_source(run, data, split)
    labels = label_map(src.class_names, run.class_names, src.name)
    decoded = decode_split(src, src.splits[split], run.geometry, run.config.data.resize)
    y = torch.from_numpy(labels[decoded.y.numpy()])
    return LabelledImages(str(data or run.config.data.source), split, decoded.x, y, decoded.ids, len(decoded.skipped))


def label_map(data_classes: list[str], run_classes: list[str], data: str) -> np.ndarray:
    """Class index of the data -> class index of the run; classes the run does not know are refused."""
    unknown = [c for c in data_classes if c not in run_classes]
    if unknown:
        raise CnnlabError(f"{data} has classes the model was not trained on: {', '.join(unknown[:5])} "
                          f"(the model knows {', '.join(run_classes[:10])})")
    return np.array([run_classes.index(c) for c in data_classes], dtype=np.int64)


def predict(run: Run | str | Path, inputs: list[str] | str, csv_path: str | None = None,
            id_format: str = "auto", backend: str = "torch") -> list[dict[str, Any]]:
    """The task's prediction for each image (a classifier: label, confidence, probabilities); optionally a
    Kaggle-style CSV (a classifier: id, label, probabilities).

    id_format: "name" (file name, as Kaggle ids usually are), "stem" (without extension), "path" (relative
    path), or "auto" (the file name). backend: "torch", or "onnx" (RUN/export/model.onnx, `cnnlab export`).
    Images are decoded on several threads, a batch ahead of the model.
    """
    if not isinstance(run, Run):
        run = load_run(run)
    if isinstance(inputs, (str, Path)):
        inputs = [str(inputs)]
    predictor = backend_predictor(run, backend)
    items = list_images([str(i) for i in inputs])
    rows, skipped = [], []
    batch = run.config.train.eval_batch_size
    for ids, x, bad in decoded_batches(items, run.geometry, run.config.data.resize, batch):
        skipped += bad
        if ids:
            rows += run.task.prediction_rows([format_id(i, id_format) for i in ids], predictor.predict(x, batch))
    if not rows:
        raise CnnlabError(f"none of the {len(items)} images could be decoded")
    if csv_path:
        write_predictions_csv(rows, csv_path, run)
    for ident, reason in skipped:
        print(f"warning: skipped {ident} ({reason})", file=sys.stderr)
    return rows


def backend_predictor(run: Run, backend: str) -> Any:
    """The run's Predictor, or an ONNX Runtime one on its exported model."""
    if backend == "torch":
        return run.predictor
    if backend != "onnx":
        raise CnnlabError(f"unknown --backend '{backend}': choose torch or onnx")
    folder = RunDir(run.dir).file(RunDir.EXPORT)
    spec_path = folder / RunDir.EXPORT_SPEC
    spec = json.loads(spec_path.read_text(encoding="utf-8")) if spec_path.is_file() else {}
    if spec.get("format") != "onnx":
        raise CnnlabError(f"{run.dir} has no ONNX export: run `cnnlab export {run.dir}` first")
    from cnnlab.runtime import OnnxPredictor

    preprocess = build_preprocess(run.config, torch.device("cpu"), False, RunDir(run.dir).read_whitening())
    return OnnxPredictor(folder / spec["file"], spec, preprocess, run.task.exporter())


def decoded_batches(items: list[tuple[str, Any]], geom: ImageGeometry, resize: str, batch: int,
                    threads: int = 4):
    """(ids, uint8 (B, C, H, W), skipped) per batch of `items`, decoded on `threads` threads, one batch ahead."""
    def decode(item: tuple[str, Any]) -> np.ndarray | str:
        try:
            return decode_image(item[1](), geom.channels, geom.size[0], resize)
        except Exception as e:  # noqa: BLE001  (a bad image is reported, never fatal)
            return unreadable_reason(e)

    chunks = [items[i : i + batch] for i in range(0, len(items), batch)]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        pending = [pool.submit(decode, it) for it in chunks[0]] if chunks else []
        for k in range(len(chunks)):
            results = [f.result() for f in pending]
            pending = [pool.submit(decode, it) for it in chunks[k + 1]] if k + 1 < len(chunks) else []
            ok = [(it[0], r) for it, r in zip(chunks[k], results) if not isinstance(r, str)]
            bad = [(it[0], r) for it, r in zip(chunks[k], results) if isinstance(r, str)]
            x = (torch.from_numpy(np.stack([r for _, r in ok])).permute(0, 3, 1, 2).contiguous() if ok else
                 torch.empty(0, dtype=torch.uint8))
            yield [i for i, _ in ok], x, bad


def format_id(ident: str, fmt: str) -> str:
    if fmt in ("auto", "name"):
        return PurePosixPath(ident).name
    if fmt == "stem":
        return PurePosixPath(ident).stem
    return ident


def write_predictions_csv(rows: list[dict[str, Any]], path: str, run: Run) -> None:
    """The task's columns (a classifier: id, the label column named as in the training CSV, else 'label', then
    prob_<class> each), a row per prediction."""
    label_col = (RunDir(run.dir).label_col() if run.dir is not None and (Path(run.dir) / RunDir.CONFIG).is_file()
                 else None) or run.config.data.label_col or "label"
    with open(Path(path), "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(run.task.csv_columns(label_col))
        for r in rows:
            writer.writerow(run.task.csv_row(r))
