"""Bottleneck features: pooled pre-logits of a frozen backbone, computed once and cached on disk.

Cached per (backbone weights, model, data, geometry, normalisation, views, precision) under
`$CNNLAB_CACHE_DIR/features` (default ~/.cache/cnnlab/features); a damaged entry is recomputed, never fatal. A
distributed run computes them sharded: each rank its part of every split, gathered in order on every rank.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from cnnlab.config import Config
from cnnlab.data.cache import features_cache_dir
from cnnlab.data.dataset import DecodedSplit, ImageGeometry
from cnnlab.data.loader import rank_slice
from cnnlab.data.preprocess import Normalization
from cnnlab.errors import CnnlabError
from cnnlab.train import dist
from cnnlab.transfer.groups import classifier_param_names

FEATURE_VERSION = 1  # bump when the feature computation changes: old cache entries are then never reused


def pooled_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) normalised images -> (B, D) pooled pre-logits features."""
    if not (hasattr(model, "forward_features") and hasattr(model, "forward_head")):
        raise CnnlabError(f"{type(model).__name__} has no forward_features / forward_head: its bottleneck "
                          "features cannot be computed")
    return model.forward_head(model.forward_features(x), pre_logits=True)


@torch.no_grad()
def extract_features(model: nn.Module, x: torch.Tensor, preprocess: Callable[[torch.Tensor], torch.Tensor],
                     device: torch.device, precision: str = "fp32", batch_size: int = 256) -> torch.Tensor:
    """Pooled pre-logits features (N, D) float32 of uint8 images x (N, C, H, W), model in eval mode, batched."""
    model.eval()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16 if precision == "fp16" else None
    out = []
    for lo in range(0, len(x), batch_size):
        xb = preprocess(x[lo : lo + batch_size].to(device))
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            out.append(pooled_features(model, xb).float().flatten(1).cpu())
    return torch.cat(out) if out else torch.empty(0, 0)


def augmented_view(x: torch.Tensor, view: int, seed: int) -> torch.Tensor:
    """View 0: the images; odd views: mirrored; views >= 2 also shifted by up to 1/8 of the size (zero-padded)."""
    if view == 0:
        return x
    out = x.flip(3) if view % 2 == 1 else x
    if view >= 2:
        g = torch.Generator().manual_seed(seed * 7919 + view)
        h, w = x.shape[2:]
        dy, dx = (int(v) for v in torch.randint(-(h // 8), h // 8 + 1, (2,), generator=g))
        out = torch.roll(out, shifts=(dy, dx), dims=(2, 3))
        if dy > 0:
            out[:, :, :dy] = 0
        elif dy < 0:
            out[:, :, dy:] = 0
        if dx > 0:
            out[:, :, :, :dx] = 0
        elif dx < 0:
            out[:, :, :, dx:] = 0
    return out


def _hash_tensor(h: Any, t: torch.Tensor) -> None:
    h.update(str((tuple(t.shape), str(t.dtype))).encode())
    h.update(t.detach().cpu().contiguous().numpy().tobytes() if t.dtype != torch.bfloat16
             else t.detach().float().cpu().numpy().tobytes())


def feature_key(model: nn.Module, cfg: Config, splits: dict[str, DecodedSplit], geometry: ImageGeometry,
                norm: Normalization, precision: str) -> str:
    """sha256 of what the features depend on: backbone weights, model name and options, every split's pixels and
    labels, geometry, normalisation, views and precision."""
    h = hashlib.sha256()
    head = classifier_param_names(model)
    for name, t in sorted(model.state_dict().items()):
        if name not in head:
            h.update(name.encode())
            _hash_tensor(h, t)
    meta = {"v": FEATURE_VERSION, "model": cfg.model.name, "kwargs": cfg.model.kwargs, "mean": norm.mean,
            "std": norm.std, "size": geometry.size[0], "channels": geometry.channels, "resize": cfg.data.resize,
            "views": cfg.transfer.views, "seed": cfg.train.seed, "precision": precision}
    h.update(json.dumps(meta, sort_keys=True, default=str).encode())
    for name, t in sorted((norm.whitening or {}).items()):  # a zca / pca map changes every feature
        h.update(name.encode())
        _hash_tensor(h, t)
    for split in sorted(splits):
        h.update(split.encode())
        _hash_tensor(h, splits[split].x)
        _hash_tensor(h, splits[split].y)
    return h.hexdigest()


@dataclass
class FeatureSet:
    """Cached bottleneck features: per split (N, D) float32 features and (N,) labels; train holds every view."""

    x: dict[str, torch.Tensor]
    y: dict[str, torch.Tensor]
    key: str = ""
    path: Path | None = None
    hit: bool = False
    seconds: float = 0.0

    def split(self, name: str) -> DecodedSplit:
        return DecodedSplit(self.x[name], self.y[name], [])


def load_or_compute_features(model: nn.Module, cfg: Config, splits: dict[str, DecodedSplit],
                             geometry: ImageGeometry, norm: Normalization, preprocess: Callable,
                             device: torch.device, precision: str,
                             log: Callable[[str], None] = print) -> FeatureSet:
    """Bottleneck features of every split: from the disk cache when the key matches, else computed and cached."""
    t0 = time.perf_counter()
    key = feature_key(model, cfg, splits, geometry, norm, precision)
    path = features_cache_dir() / f"{key[:40]}.safetensors"
    if cfg.transfer.cache and path.is_file():
        try:
            data = load_file(str(path))
            fs = FeatureSet({s: data[f"{s}.x"] for s in splits}, {s: data[f"{s}.y"] for s in splits}, key, path,
                            True, time.perf_counter() - t0)
            log(f"bottleneck features: cache hit {path} ({fs.seconds:.1f}s)")
            return fs
        except Exception as e:  # noqa: BLE001  (a damaged cache entry is recomputed, never fatal)
            log(f"warning: ignoring unreadable feature cache {path} ({type(e).__name__})")
    xs, ys = {}, {}
    for name, sp in splits.items():
        views = cfg.transfer.views if name == "train" else 1
        lo, hi = rank_slice(len(sp.x), dist.rank(), dist.world_size())  # distributed: each rank its part
        feats = [dist.gather_cat(extract_features(model, augmented_view(sp.x[lo:hi], v, cfg.train.seed), preprocess,
                                                  device, precision)) for v in range(views)]
        xs[name], ys[name] = torch.cat(feats), sp.y.repeat(views)
    fs = FeatureSet(xs, ys, key, path if cfg.transfer.cache else None, False, time.perf_counter() - t0)
    if cfg.transfer.cache and dist.is_writer():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        save_file({**{f"{s}.x": v.contiguous() for s, v in xs.items()},
                   **{f"{s}.y": v.contiguous() for s, v in ys.items()}}, str(tmp))
        os.replace(tmp, path)
    shapes = ", ".join(f"{s} {tuple(v.shape)}" for s, v in xs.items())
    log(f"bottleneck features: computed in {fs.seconds:.1f}s ({shapes})" + (f", cached in {path}" if fs.path else ""))
    return fs

