"""The second pass of a report: the chosen rows only, read again, drawn as thumbnails and Grad-CAM overlays.

Every shown image is written once, as `img/r<row>.png` (at most THUMB pixels a side, as the model saw it: resized
and cropped); Grad-CAM images are `img/cam<row>.png`: the image, its Grad-CAM and its Grad-CAM++ side by side, for
the class the model predicted. Rows are read in chunks and Grad-CAM runs on small batches, so memory stays bounded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cnnlab.inference import Run
from cnnlab.report.collect import Picks, Predictions
from cnnlab.report.gradcam import feature_maps, grad_cams
from cnnlab.report.layers import ModelTrace
from cnnlab.report.split import SplitView

THUMB = 96  # largest side of a thumbnail
PANEL = 96  # side of each panel of a Grad-CAM image (a card is 3 panels and two 4-pixel gaps: 296 x 96)
CAM_BATCH = 8  # images per Grad-CAM forward / backward pass
TAKE = 256  # rows read at a time


@dataclass
class Rendered:
    thumbs: dict[int, str] = field(default_factory=dict)  # row -> path relative to the report folder
    cams: dict[int, str] = field(default_factory=dict)
    sizes: dict[int, tuple[int, int]] = field(default_factory=dict)  # row -> (width, height) of its thumbnail
    feature_image: np.ndarray | None = None  # (H, W, C) uint8
    feature_maps: list[torch.Tensor] = field(default_factory=list)


def to_pil(x: np.ndarray | torch.Tensor) -> Image.Image:
    """uint8 (C, H, W) -> a PIL image (L or RGB)."""
    arr = np.asarray(x)
    return Image.fromarray(arr[0], "L") if arr.shape[0] == 1 else Image.fromarray(arr.transpose(1, 2, 0), "RGB")


def thumbnail(im: Image.Image, side: int = THUMB) -> Image.Image:
    if max(im.size) <= side:
        return im
    scale = side / max(im.size)
    return im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.LANCZOS)


def _panel(im: Image.Image) -> np.ndarray:
    resample = Image.NEAREST if max(im.size) * 2 <= PANEL else Image.BILINEAR
    return np.asarray(im.convert("RGB").resize((PANEL, PANEL), resample), dtype=np.float32) / 255


def overlay(im: Image.Image, cams: list[np.ndarray], alpha: float = 0.45) -> Image.Image:
    """The image and one heat-map overlay per CAM ((H, W) in [0, 1]), side by side with a 4-pixel gap."""
    from matplotlib import colormaps

    base = _panel(im)
    panels = [base]
    for cam in cams:
        heat = Image.fromarray((np.clip(cam, 0, 1) * 255).astype(np.uint8), "L").resize((PANEL, PANEL),
                                                                                       Image.BILINEAR)
        colored = colormaps["jet"](np.asarray(heat, dtype=np.float32) / 255)[..., :3]
        panels.append((1 - alpha) * base + alpha * colored)
    gap = np.ones((PANEL, 4, 3), dtype=np.float32)
    row = np.concatenate([p for panel in panels for p in (panel, gap)][:-1], axis=1)
    return Image.fromarray((row * 255).round().astype(np.uint8), "RGB")


def _cams(run: Run, trace: ModelTrace, x: torch.Tensor, classes: np.ndarray) -> list[list[np.ndarray]]:
    device = run.predictor.device
    out: list[list[np.ndarray]] = []
    for lo in range(0, len(x), CAM_BATCH):
        xb = run.predictor.preprocess(x[lo : lo + CAM_BATCH].to(device))
        cams = grad_cams(run.model, trace.target, xb, torch.as_tensor(classes[lo : lo + CAM_BATCH]))
        out += [[cams["gradcam"][i].numpy(), cams["gradcam++"][i].numpy()] for i in range(len(xb))]
    return out


def render_rows(run: Run, view: SplitView, preds: Predictions, picks: Picks, trace: ModelTrace,
                out: Path) -> Rendered:
    """Write the thumbnails and Grad-CAM images of the picked rows under out/img; return their paths."""
    img_dir = out / "img"
    img_dir.mkdir(parents=True, exist_ok=True)
    done = Rendered()
    cam_rows = set(picks.cam_rows()) if trace.target is not None else set()
    rows = np.asarray(picks.all_rows(), dtype=np.int64)
    for lo in range(0, len(rows), TAKE):
        chunk = rows[lo : lo + TAKE]
        x = view.take(chunk)
        for row, img in zip(chunk.tolist(), x):
            im = thumbnail(to_pil(img))
            im.save(img_dir / f"r{row}.png", optimize=True)
            done.thumbs[row], done.sizes[row] = f"img/r{row}.png", im.size
            if row == picks.feature_row:
                done.feature_image = np.asarray(to_pil(img).convert("RGB"))
                if trace.stages:
                    xb = run.predictor.preprocess(img[None].to(run.predictor.device))
                    done.feature_maps = feature_maps(run.model, trace.stages, xb)
        want = [i for i, row in enumerate(chunk.tolist()) if row in cam_rows]
        if want:
            for i, cams in zip(want, _cams(run, trace, x[want], preds.pred[chunk[want]])):
                row = int(chunk[i])
                overlay(to_pil(x[i]), cams).save(img_dir / f"cam{row}.png", optimize=True)
                done.cams[row] = f"img/cam{row}.png"
    return done
