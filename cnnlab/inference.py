"""A trained model and its run folder: `Run`, `load_run`, `evaluate` and `predict`.

    run = cnnlab.load_run("runs/...")    # everything back from a run folder alone (a Predictor, no Trainer)
    run.evaluate()                       # val / test metrics with a confusion matrix
    run.predict(["img1.png", "folder/"]) # labels and probabilities
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
from cnnlab.data.dataset import ImageGeometry, decode_image, decode_split, set_max_image_pixels
from cnnlab.data.loader import TensorBatches
from cnnlab.data.readers import DataSource, list_images, load_source
from cnnlab.errors import CnnlabError
from cnnlab.models.rewrite import pool_before_activation
from cnnlab.recipe import build_model, build_predictor, build_preprocess
from cnnlab.runs import RunDir
from cnnlab.train.checkpoint import load_weights_file
from cnnlab.train.metrics import per_class_report
from cnnlab.train.predictor import Predictor
from cnnlab.train.trainer import resolve_device, resolve_precision


@dataclass
class Run:
    """A trained model with its run folder, resolved config, classes, history and metrics.

    `predictor` evaluates and predicts. `trainer` is the Trainer that trained the model in this process; for a run
    loaded from its folder it is the Predictor (it has no optimizer; its .fit says how to train from the weights).
    """

    dir: Path | None
    config: Config
    class_names: list[str]
    model: nn.Module
    predictor: Predictor
    trainer: Any = None
    history: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.trainer is None:
            self.trainer = self.predictor

    @property
    def run_dir(self) -> RunDir | None:
        return RunDir(self.dir) if self.dir is not None else None

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
    d = cfg.data
    model = build_model(cfg, len(classes), ImageGeometry((d.image_size, d.image_size), d.channels),
                        load_weights=False)  # the run's own weights are loaded below
    model.load_state_dict(load_weights_file(run.weights(weights)))
    pool_before_activation(model)  # exact, and faster (cnnlab.models.rewrite)
    metrics = run.read_metrics()
    threshold = (metrics.get("threshold") or {}).get("value")
    predictor = build_predictor(cfg, model, len(classes), dev, precision, run.read_whitening(), threshold)
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
    """Metrics, confusion matrix and per-class report of `run` on a split of `data`.

    split "auto": the test split if the data has one; else, for the data the run was trained on, its val split
    (recreated with the run's seed); else every image.
    """
    if not isinstance(run, Run):
        run = load_run(run)
    images = load_images(run, data, split)
    dev = run.predictor.device
    batches = TensorBatches(images.x.to(dev), images.y.to(dev), run.config.train.eval_batch_size, False)
    logs, cm = run.predictor.evaluate(batches, prefix="")
    if run.predictor.decision_threshold is not None:
        logs["decision_threshold"] = run.predictor.decision_threshold
    return {"data": images.data, "split": images.split, "count": len(images.y), **logs, "confusion_matrix": cm,
            "per_class": per_class_report(cm, run.class_names), "skipped": images.skipped}


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
    """Predicted class and probabilities for each image; optionally a Kaggle-style CSV (id, label, probs).

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
    for ids, x, bad in decoded_batches(items, run.geometry, run.config.data.resize, run.config.train.eval_batch_size):
        skipped += bad
        if not ids:
            continue
        probs = predictor.predict_proba(x, run.config.train.eval_batch_size)
        rows += [{"id": format_id(ident, id_format), "label": run.class_names[int(k)], "confidence": float(p[int(k)]),
                  "probabilities": dict(zip(run.class_names, map(float, p)))}
                 for ident, p, k in zip(ids, probs, predictor.decide(probs))]
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
    return OnnxPredictor(folder / spec["file"], spec, preprocess, run.predictor.decision_threshold)


def decoded_batches(items: list[tuple[str, Any]], geom: ImageGeometry, resize: str, batch: int,
                    threads: int = 4):
    """(ids, uint8 (B, C, H, W), skipped) per batch of `items`, decoded on `threads` threads, one batch ahead."""
    def decode(item: tuple[str, Any]) -> np.ndarray | str:
        try:
            return decode_image(item[1](), geom.channels, geom.size[0], resize)
        except Exception as e:  # noqa: BLE001  (a bad image is reported, never fatal)
            return type(e).__name__

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
    """Columns: id, the label column (named as in the training CSV, else 'label'), then prob_<class> each."""
    label_col = (run.run_dir.label_col() if run.dir is not None and (Path(run.dir) / RunDir.CONFIG).is_file()
                 else None) or run.config.data.label_col or "label"
    with open(Path(path), "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["id", label_col, *(f"prob_{c}" for c in run.class_names)])
        for r in rows:
            writer.writerow([r["id"], r["label"], *(f"{r['probabilities'][c]:.6f}" for c in run.class_names)])
