"""`write_report`: a run folder in, `RUN/report/index.html` and its images out.

The steps: the split is read a chunk at a time and predicted (collect), the rows to show are chosen, the model is
traced for its Grad-CAM layer, stages and first layer (layers), the chosen rows are read again and drawn
(render), the figures are drawn (figures) and the page is written (page). Everything is written into a temporary
folder beside the target, which then replaces the previous report, so a report is never half old, half new.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cnnlab.errors import CnnlabError
from cnnlab.inference import Run, load_run
from cnnlab.models.rewrite import as_written, pool_before_activation
from cnnlab.report import figures
from cnnlab.report.collect import choose_images, predict_split, split_scores
from cnnlab.report.gradcam import first_layer_weights
from cnnlab.report.layers import ModelTrace, trace_model
from cnnlab.report.page import Parts, render_page
from cnnlab.report.render import render_rows
from cnnlab.report.runinfo import read_run_info
from cnnlab.report.split import SplitView, open_split
from cnnlab.report.template import GENERATOR
from cnnlab.runs import RunDir

SUMMARY = "summary.json"  # the page's headline numbers, beside index.html
FIGURES = {"curves": "curves.png", "roc": "roc_pr.png", "reliability": "reliability.png", "filters": "filters.png",
           "features": "features.png", "augment": "augment.png"}  # the page's figures (draw_figures) and their files
IMAGES = "img"  # the shown images and Grad-CAMs (cnnlab.report.render)


def summary_of(parts: Parts) -> dict[str, Any]:
    """The headline numbers of the page, for scripts: data, split, count, metrics, Grad-CAM layer, seconds."""
    s = parts.scores
    out = {"data": parts.data, "split": parts.split, "count": s["count"], "accuracy": s["accuracy"],
           "balanced_accuracy": s["balanced_accuracy"], "macro_f1": s["macro_f1"], "loss": s["loss"],
           "ece": s["calibration"]["ece"], "confusion_matrix": s["confusion_matrix"].tolist(),
           "target_layer": parts.trace.target.name if parts.trace.target is not None else None,
           "target_note": parts.trace.note, "seconds": round(parts.seconds, 3), "phases": parts.phases}
    if s["binary"]:
        out.update(roc_auc=s["binary"]["roc_auc"], pr_auc=s["binary"]["pr_auc"], threshold=s["binary"]["threshold"])
    return out


def report_folder(run_dir: RunDir, out: str | Path | None) -> Path:
    """Where the report goes: --out, or RUN/report. A folder holding anything but an earlier report is refused."""
    target = Path(out) if out else run_dir.file(RunDir.REPORT)
    if target.exists():
        if not target.is_dir():
            raise CnnlabError(f"--out {target} is a file; choose a folder")
        page = target / RunDir.REPORT_PAGE
        earlier = page.is_file() and f'name="generator" content="{GENERATOR}' in page.read_text(
            encoding="utf-8", errors="replace")[:2000]
        if any(target.iterdir()) and not earlier:
            raise CnnlabError(f"{target} is not empty and holds no cnnlab report; choose a new or empty --out "
                              "folder, so nothing in it is overwritten")
        other = not_report_files(target) if earlier else []
        if other:  # the whole folder is replaced: these would be deleted with the earlier report
            shown = ", ".join(other[:3]) + (f" and {len(other) - 3} more" if len(other) > 3 else "")
            raise CnnlabError(f"{target} holds an earlier cnnlab report and files that are not part of it ({shown}); "
                              "move them out, or choose a new or empty --out folder, so nothing of yours is deleted")
    return target


def not_report_files(folder: Path) -> list[str]:
    """The names in a report folder that a report does not write (the folder is replaced as a whole)."""
    own = {RunDir.REPORT_PAGE, SUMMARY, *FIGURES.values()}
    return sorted(p.name for p in folder.iterdir()
                  if not ((p.name in own and p.is_file()) or (p.name == IMAGES and p.is_dir())))


def replace_folder(tmp: Path, target: Path) -> None:
    old = target.with_name(f".{target.name}.old{os.getpid()}")
    if target.exists():
        target.rename(old)
    tmp.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def split_counts(view: SplitView, num_classes: int) -> dict[str, list[int]]:
    """Images per run class in every split of the data, as the report read it (labels only, nothing decoded)."""
    return {name: np.bincount(view.to_run[s.labels], minlength=num_classes).tolist()
            for name, s in view.source.splits.items()}


def draw_figures(run: Run, parts: Parts, out: Path) -> None:
    """The matplotlib figures of the page, into out/ (names in parts.figures, descriptions in parts.notes)."""
    info, trace = parts.info, parts.trace
    if info.history:
        gap = figures.learning_curves(info.history, info.best_epoch, out / FIGURES["curves"])
        parts.figures["curves"] = FIGURES["curves"]
        parts.notes["gap"] = gap_note(gap)
    if parts.scores["binary"]:
        figures.roc_pr(parts.scores["binary"], run.class_names[1], out / FIGURES["roc"])
        parts.figures["roc"] = FIGURES["roc"]
    figures.reliability(parts.scores["calibration"], out / FIGURES["reliability"])
    parts.figures["reliability"] = FIGURES["reliability"]
    weight = first_layer_weights(run.model, trace.first_layer)
    g = run.geometry
    shape = (g.channels, *g.size)
    if weight is not None and (weight.ndim == 4 or weight.shape[1] == int(np.prod(shape))):
        parts.notes["filters"] = figures.filters(weight, shape, out / FIGURES["filters"])
        parts.figures["filters"] = FIGURES["filters"]
    r = parts.rendered
    if r.feature_maps and r.feature_image is not None:
        figures.feature_maps(r.feature_image, trace.stages, r.feature_maps, out / FIGURES["features"])
        parts.figures["features"] = FIGURES["features"]
    if parts.augment:
        draw_augmentation(run, parts, out)


def gap_note(gap: dict[str, Any]) -> str:
    if not gap.get("gap"):
        return ""
    words = []
    for key, value in gap["gap"].items():
        sign = "val higher" if value < 0 else "train higher"
        words.append(f"{key.replace('_', ' ')} train - val = {value:+.4f} ({sign})")
    return f"Overfitting gap at epoch {gap['epoch']}: " + "; ".join(words) + " (the shaded band)."


def draw_augmentation(run: Run, parts: Parts, out: Path) -> None:
    from cnnlab.data.preview import preview_batches

    try:
        x, augmented, names = preview_batches(run.config, 8, rows=2)
    except (CnnlabError, OSError) as e:  # the training data moved or went away since the run
        parts.augment += f" (no preview: {e})"
        return
    figures.augmentation(x, augmented, names, f"augmentation {parts.augment}", out / FIGURES["augment"])
    parts.figures["augment"] = FIGURES["augment"]


def used_augmentation(run: Run) -> str | None:
    from cnnlab.data.augment import build_augmenter, describe

    cfg = run.config
    active = build_augmenter(cfg.augment, cfg.train.seed, len(run.class_names)) is not None
    return describe(cfg.augment) if active else None


def trace_for(run: Run, view: SplitView, row: int) -> ModelTrace:
    x = run.predictor.preprocess(view.take(np.array([row])).to(run.predictor.device))
    return trace_model(run.model, x)


def write_report(run: Run | str | Path, data: str | None = None, split: str = "auto", out: str | Path | None = None,
                 *, per_cell: int = 24, device: str | None = None,
                 log: Callable[[str], None] | None = None) -> Path:
    """Write the report of a run on a split of `data` (default: the run's own data; split auto: test if the data
    has one, else the held-out val split). Returns the path of index.html (RUN/report/index.html, or in `out`)."""
    clock = Phases()
    if per_cell < 1:
        raise CnnlabError(f"--per-cell must be at least 1, got {per_cell}")
    if not isinstance(run, Run):
        run = load_run(run, device=device)
    if run.dir is None:
        raise CnnlabError("this Run has no run folder to report on")
    run_dir = RunDir.open(run.dir)
    target = report_folder(run_dir, out)
    view = open_split(run, data, split)
    preds = predict_split(run, view)
    if not len(preds.labels):
        raise CnnlabError(f"the {view.name} split of {view.source.name} has no images to report on")
    clock.done("predict")
    picks = choose_images(preds, per_cell)
    as_written(run.model)  # exact: feature maps are then shown after their activation, as the model was written
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        trace = trace_for(run, view, picks.feature_row or 0)
        rendered = render_rows(run, view, preds, picks, trace, tmp)
        clock.done("images and Grad-CAM")
        parts = Parts(read_run_info(run_dir), f"{run.config.model.name} on {Path(view.source.name).name}: "
                      f"{run_dir.path.name}", str(data or run.config.data.source), view.name,
                      split_counts(view, len(run.class_names)), view.skipped, preds,
                      split_scores(preds, run.class_names), picks, rendered, trace, augment=used_augmentation(run),
                      val_held_out=view.source.val_held_out)
        draw_figures(run, parts, tmp)
        clock.done("figures")
        parts.seconds, parts.phases = clock.total, clock.seconds
        (tmp / RunDir.REPORT_PAGE).write_text(render_page(parts), encoding="utf-8")
        (tmp / SUMMARY).write_text(json.dumps(summary_of(parts), indent=2) + "\n", encoding="utf-8")
        replace_folder(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        pool_before_activation(run.model)  # the caller's model gets its faster (and exact) order back
    page = target / RunDir.REPORT_PAGE
    if log:
        log(f"report: {page} ({view.name} split, {len(preds.labels):,} images, {clock.total:.1f} s)")
    return page


class Phases:
    """Seconds per phase of a report (reading and predicting, images, figures), for the page and summary.json."""

    def __init__(self) -> None:
        self.started = self.last = time.perf_counter()
        self.seconds: dict[str, float] = {}

    def done(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = round(now - self.last, 3)
        self.last = now

    @property
    def total(self) -> float:
        return time.perf_counter() - self.started


def report_if_asked(run: Run, log: Callable[[str], None] = print) -> Path | None:
    """After training: the report when the run's config asks for it (`--report`, callbacks.report). A report that
    fails leaves the finished run as it is and says how to try again."""
    if not run.config.callbacks.report or run.dir is None:
        return None
    if not run.config.verbose:
        log = lambda message: None  # noqa: E731
    try:
        return write_report(run.dir, log=log)
    except Exception as e:  # noqa: BLE001  (the run is saved; the report can be written again)
        log(f"warning: the report could not be written ({type(e).__name__}: {e}); try again with "
            f"`cnnlab report {run.dir}`")
        return None
