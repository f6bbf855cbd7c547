"""The report's figures, drawn with matplotlib (Agg) and saved as PNG: learning curves, ROC / PR, the reliability
diagram, first-layer filters, feature maps per stage and the augmentation preview."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnlab.data.preview import draw_augmentation_grid
from cnnlab.plotting import pyplot, save

TRAIN, VAL, ACCENT = "#1f77b4", "#d62728", "#2ca02c"


def _series(history: list[dict[str, Any]], key: str) -> np.ndarray:
    return np.array([float(h[key]) if h.get(key) not in (None, "") else np.nan for h in history])


def accuracy_key(history: list[dict[str, Any]]) -> str | None:
    for key in ("accuracy", "balanced_accuracy", "f1", "mae", "mse"):
        if any(h.get(key) not in (None, "") for h in history):
            return key
    return None


def learning_curves(history: list[dict[str, Any]], best_epoch: int | None, path: Path) -> dict[str, Any]:
    """Loss and accuracy (train and val) and the learning rate per epoch; the best epoch marked, the gap between
    train and val shaded. Returns the gap at the best (or last) epoch."""
    plt = pyplot()
    epochs = _series(history, "epoch")
    acc = accuracy_key(history)
    panels = [("loss", "loss")] + ([(acc, acc.replace("_", " "))] if acc else []) + [("lr", "learning rate")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.2), squeeze=False)
    gap: dict[str, Any] = {}
    at = best_epoch if best_epoch is not None else (int(epochs[-1]) if len(epochs) else None)
    for ax, (key, title) in zip(axes[0], panels):
        train = _series(history, key)
        ax.plot(epochs, train, marker="o" if len(epochs) < 15 else None, ms=3, color=TRAIN,
                label="train" if key != "lr" else "lr")
        val = _series(history, f"val_{key}") if key != "lr" else None
        if val is not None and np.isfinite(val).any():
            ax.plot(epochs, val, marker="o" if len(epochs) < 15 else None, ms=3, color=VAL, label="val")
            ax.fill_between(epochs, train, val, color=VAL, alpha=0.08, label="train - val gap")
            if at is not None and at in epochs:
                i = int(np.flatnonzero(epochs == at)[0])
                gap[key] = float(train[i] - val[i])
        if at is not None:
            ax.axvline(at, color=ACCENT, ls="--", lw=1, label=f"best epoch {at}" if best_epoch else f"epoch {at}")
        if key == "lr" and np.nanmax(train, initial=0) > 0 and np.nanmin(train, initial=1) > 0:
            ax.set_yscale("log")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch", fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    save(fig, path)
    return {"epoch": at, "gap": gap, "accuracy_key": acc}


def roc_pr(curves: dict[str, Any], positive: str, path: Path) -> None:
    """ROC and precision-recall curves of P(positive) with the operating point of the decision threshold."""
    plt = pyplot()
    fig, (roc, pr) = plt.subplots(1, 2, figsize=(8.4, 3.6))
    p, t = curves["point"], curves["threshold"]
    roc.plot(curves["fpr"], curves["tpr"], color=TRAIN, label=f"ROC AUC {curves['roc_auc']:.4f}")
    roc.plot([0, 1], [0, 1], color="#999", ls=":", lw=1)
    roc.plot([p["fpr"]], [p["tpr"]], "o", color=VAL, label=f"threshold {t:.3g}: TPR {p['tpr']:.3f}, FPR {p['fpr']:.3f}")
    roc.set_xlabel("false positive rate", fontsize=9)
    roc.set_ylabel("true positive rate", fontsize=9)
    roc.set_title(f"ROC, positive class {positive}", fontsize=10)
    pr.plot(curves["recall"], curves["precision"], color=TRAIN, label=f"PR AUC (AP) {curves['pr_auc']:.4f}")
    pr.axhline(curves["positive_rate"], color="#999", ls=":", lw=1, label="chance")
    pr.plot([p["tpr"]], [p["precision"]], "o", color=VAL,
            label=f"threshold {t:.3g}: recall {p['tpr']:.3f}, precision {p['precision']:.3f}")
    pr.set_xlabel("recall", fontsize=9)
    pr.set_ylabel("precision", fontsize=9)
    pr.set_title("precision-recall", fontsize=10)
    for ax in (roc, pr):
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right" if ax is roc else "lower left")
        ax.tick_params(labelsize=8)
    fig.tight_layout()
    save(fig, path)


def reliability(cal: dict[str, Any], path: Path) -> None:
    """Accuracy against mean confidence per confidence bin (bars), the diagonal, and how many images each bin has."""
    plt = pyplot()
    bins = cal["bins"]
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(4.6, 4.6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    lo = np.array([b["lo"] for b in bins])
    width = np.array([b["hi"] - b["lo"] for b in bins])
    acc = np.array([b["accuracy"] for b in bins])
    conf = np.array([b["confidence"] for b in bins])
    count = np.array([b["count"] for b in bins])
    has = count > 0
    ax.bar(lo[has], acc[has], width[has], align="edge", color=TRAIN, edgecolor="white", label="accuracy")
    ax.bar(lo[has], conf[has] - acc[has], width[has], bottom=acc[has], align="edge", color=VAL, alpha=0.3,
           edgecolor=VAL, label="gap to confidence")
    ax.plot([0, 1], [0, 1], color="#555", ls="--", lw=1, label="perfect calibration")
    ax.set_ylabel("accuracy", fontsize=9)
    ax.set_title(f"reliability: ECE {cal['ece']:.4f}, MCE {cal['mce']:.4f}", fontsize=10)
    ax.legend(fontsize=7, loc="upper left")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    hist.bar(lo, count, width, align="edge", color="#888", edgecolor="white")
    if count.max(initial=0) > 0:
        from matplotlib.ticker import NullFormatter

        hist.set_yscale("log")
        hist.yaxis.set_minor_formatter(NullFormatter())
    hist.set_xlabel("confidence (probability of the top class)", fontsize=9)
    hist.set_ylabel("images", fontsize=9)
    for a in (ax, hist):
        a.tick_params(labelsize=8)
        a.grid(alpha=0.3)
    fig.tight_layout()
    save(fig, path)


def mosaic(tiles: list[np.ndarray], cols: int, pad: int = 1, fill: float = 1.0) -> np.ndarray:
    """Equal-sized (H, W) or (H, W, 3) tiles in a grid with `pad` pixels of `fill` between them."""
    h, w = tiles[0].shape[:2]
    rows = (len(tiles) + cols - 1) // cols
    shape = (rows * (h + pad) - pad, cols * (w + pad) - pad) + tiles[0].shape[2:]
    out = np.full(shape, fill, dtype=np.float32)
    for i, t in enumerate(tiles):
        r, c = divmod(i, cols)
        out[r * (h + pad) : r * (h + pad) + h, c * (w + pad) : c * (w + pad) + w] = t
    return out


def _unit(a: np.ndarray) -> np.ndarray:
    lo, hi = float(a.min()), float(a.max())
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)


def filters(weight: torch.Tensor, image_shape: tuple[int, int, int], path: Path, limit: int = 64) -> str:
    """The first layer's filters as images: a Conv2d's kernels (RGB for 3 input channels, gray otherwise, each
    scaled to its own range), or a Linear's weight rows reshaped to the input image. Returns a description."""
    plt = pyplot()
    w = weight.numpy()
    if w.ndim == 2:  # a dense first layer (an MLP): each unit's weights are an image of the input's shape
        c, h, wd = image_shape
        w = w.reshape(w.shape[0], c, h, wd)
        kind = f"{weight.shape[0]} units of the first dense layer, each {c}x{h}x{wd}"
    else:
        kind = f"{w.shape[0]} kernels of {w.shape[1]}x{w.shape[2]}x{w.shape[3]}"
    w = w[:limit]
    tiles = [_unit(k.transpose(1, 2, 0)) if k.shape[0] == 3 else _unit(k.mean(0)) for k in w]
    cols = int(np.ceil(np.sqrt(len(tiles))))
    grid = mosaic(tiles, cols, pad=1)
    side = min(7.0, max(2.5, 0.5 * cols))
    fig, ax = plt.subplots(figsize=(side, side * grid.shape[0] / grid.shape[1]))
    ax.imshow(grid, cmap="gray", interpolation="nearest", vmin=0, vmax=1)
    ax.set_axis_off()
    save(fig, path)
    shown = f" (the first {limit} shown)" if weight.shape[0] > limit else ""
    return kind + shown


def feature_maps(image: np.ndarray, stages: list[Any], maps: list[torch.Tensor], path: Path,
                 channels: int = 8) -> None:
    """One image and, per stage, its `channels` most active feature maps (each scaled to its own range)."""
    plt = pyplot()
    from matplotlib import colormaps

    fig, axes = plt.subplots(len(stages) + 1, 1, figsize=(1.15 * channels + 1.5, 1.45 * (len(stages) + 1)),
                             squeeze=False)
    first = axes[0][0]
    first.imshow(image.squeeze(-1) if image.shape[-1] == 1 else image, cmap="gray", interpolation="nearest")
    first.set_title("input image (as the model sees it, before normalization)", fontsize=9, loc="left")
    first.set_axis_off()
    for ax, stage, fm in zip(axes[1:, 0], stages, maps):
        strength = fm.mean(dim=(1, 2))
        top = torch.argsort(strength, descending=True)[:channels].tolist()
        c, h, w = fm.shape
        zoom = max(1, -(-24 // max(h, w)))  # small maps drawn at 24 pixels or more, so the gaps stay thin
        tiles = [np.kron(_unit(fm[k].numpy()), np.ones((zoom, zoom))) for k in top]
        cmap = colormaps["viridis"].with_extremes(bad="white")  # white: the gaps between channels
        ax.imshow(mosaic(tiles, len(tiles), pad=max(2, tiles[0].shape[1] // 12), fill=np.nan), cmap=cmap,
                  interpolation="nearest", vmin=0, vmax=1)
        ax.set_title(f"{stage.name} ({stage.kind}) {c}x{h}x{w}: channels {', '.join(map(str, top))}",
                     fontsize=8, loc="left")
        ax.set_axis_off()
    fig.tight_layout()
    save(fig, path)


def augmentation(x: torch.Tensor, augmented: list[torch.Tensor], names: list[str], title: str, path: Path) -> None:
    """Original training images (top row, with their class) above augmented versions of them."""
    fig = draw_augmentation_grid(pyplot(), x, augmented, names, "draw", scale=(1.25, 1.3), fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save(fig, path)
