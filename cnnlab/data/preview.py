"""`cnnlab augment-preview`: a PNG grid of original training images above augmented versions of them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cnnlab.config import Config, apply_overrides
from cnnlab.data.augment import Augmenter, describe
from cnnlab.data.dataset import decode_split, infer_geometry
from cnnlab.data.readers import load_source
from cnnlab.errors import CnnlabError
from cnnlab.plotting import pyplot, save


def preview_batches(cfg: Config, n: int, rows: int = 3) -> tuple[torch.Tensor, list[torch.Tensor], list[str]]:
    """n originals (uint8 (n, C, H, W)), `rows` augmented versions of them (float in [0, 1]) and class names."""
    src = load_source(cfg.data.source, val_split=0.0, seed=cfg.train.seed, images=cfg.data.images)
    train = src.splits["train"]
    pick = np.sort(np.random.default_rng(cfg.train.seed).permutation(len(train))[: n * 2])
    geom = infer_geometry(src, cfg.data.image_size, cfg.data.channels)
    decoded = decode_split(src, train.subset(pick), geom, cfg.data.resize)
    x, y = decoded.x[:n], decoded.y[:n]
    augmenter = Augmenter(cfg.augment, cfg.train.seed, len(src.class_names))
    out = []
    for epoch in range(rows):
        xa = augmenter.augment_batch(x, epoch, 0).div_(255)
        if augmenter.mixes:
            xa, _ = augmenter.mix(xa, y)
        out.append(xa.clamp(0, 1))
    names = [src.class_names[int(i)] for i in y]
    return x, out, names


def draw_augmentation_grid(plt, x: torch.Tensor, augmented: list[torch.Tensor], names: list[str], row_name: str,
                           scale: tuple[float, float] = (1.6, 1.7), fontsize: int = 8):
    """A figure of the originals (uint8, first row, titled with their class) above the augmented rows (float in
    [0, 1]), each row labelled `row_name` and its number."""
    rows = [x.float() / 255, *augmented]
    cols = len(x)
    fig, axes = plt.subplots(len(rows), cols, figsize=(scale[0] * cols, scale[1] * len(rows)), squeeze=False)
    for r, batch in enumerate(rows):
        for c in range(cols):
            ax = axes[r][c]
            img = batch[c].permute(1, 2, 0).numpy()
            ax.imshow(img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1,
                      interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(names[c][:14], fontsize=fontsize)
        axes[r][0].set_ylabel("original" if r == 0 else f"{row_name} {r}", fontsize=fontsize + 1)
    return fig


def write_augment_preview(data: str, out: str | Path, preset: str = "medium", n: int = 8, seed: int = 0,
                          image_size: int | None = None, overrides: list[str] | None = None) -> Path:
    """Write the grid: first row originals (with class names), then one row per augmented epoch."""
    if n < 1:
        raise CnnlabError(f"--n must be at least 1, got {n}")
    cfg = Config()
    cfg.data.source, cfg.augment.preset, cfg.train.seed, cfg.data.image_size = data, preset, seed, image_size
    apply_overrides(cfg, overrides or [])
    x, augmented, names = preview_batches(cfg, n)
    fig = draw_augmentation_grid(pyplot(), x, augmented, names, "epoch")
    fig.suptitle(f"augmentation {describe(cfg.augment)}", fontsize=9, wrap=True)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    return save(fig, out, tight=False)
