"""Preprocessing: the map from a uint8 batch (B, C, H, W) to the float tensor a model sees.

Modes (DataConfig.normalize), all computed in [0, 1] pixel units:
  standardize   (x - train mean) / train std, per channel
  scale         x in [0, 1]
  model         (x - mean) / std of the model (pretrained weights)
  zero_center   x - train mean per channel (VGG)
  per_image     x - the image's own mean over all its pixels (AlexNet-style centering; colour kept)
  zca / pca     whitening, a linear map fitted on (a sample of) the training split; small images only

Statistics are computed once on the training split. The per-channel ones live in config.yaml (data.mean,
data.std); a whitening map is stored in the run folder (cnnlab.runs.RunDir.PREPROCESS) and loaded by load_run, so
evaluate and predict apply exactly what training applied.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cnnlab.config.schema import NORMALIZE_MODES
from cnnlab.errors import CnnlabError

WHITEN_MODES = ("zca", "pca")
MAX_WHITEN_DIM = 4096  # C*H*W; the covariance is D x D (3x32x32 = 3072 fits)


@dataclass
class Normalization:
    """A resolved data.normalize: the mode, per-channel mean / std in [0, 1] units, or a fitted whitening map."""

    mode: str
    mean: list[float] | None = None
    std: list[float] | None = None
    whitening: dict[str, torch.Tensor] | None = None


def stats_indices(n: int, max_images: int = 20_000, image_values: int = 1, max_values: int = 50_000_000
                  ) -> torch.Tensor:
    """Which training images the statistics are computed on: every k-th, the same in memory and streaming.

    At most `max_images`, and at most `max_values` pixel values in all (e.g. ~650 RGB images of 160 px).
    """
    limit = max(1, min(max_images, max_values // max(1, image_values)))
    return torch.arange(0, n, max(1, n // limit))


def channel_stats_of(sample: torch.Tensor, chunk: int = 256) -> tuple[list[float], list[float]]:
    """Per-channel mean and std in [0, 1] units of a uint8 (N, C, H, W) sample (float64 sums, chunk by chunk)."""
    c = sample.shape[1]
    total, squares = torch.zeros(c, dtype=torch.float64), torch.zeros(c, dtype=torch.float64)
    for lo in range(0, len(sample), chunk):
        x = sample[lo : lo + chunk].float()
        total += x.sum(dim=(0, 2, 3), dtype=torch.float64)
        squares += x.square().sum(dim=(0, 2, 3), dtype=torch.float64)
    count = sample.numel() // c
    mean = total / count
    var = (squares - count * mean.square()) / max(count - 1, 1)
    std = (var.clamp_min(0).sqrt() / 255).clamp_min(1e-3)
    return [round(v, 6) for v in (mean / 255).tolist()], [round(v, 6) for v in std.tolist()]


def fit_whitening(sample: torch.Tensor, mode: str, eps: float) -> dict[str, torch.Tensor]:
    """Mean (D,) and whitening matrix (D, D) from a uint8 (N, C, H, W) sample.

    ZCA: U diag(1/sqrt(s + eps)) U^T (stays close to the image); PCA: diag(1/sqrt(s + eps)) U^T (components in
    order of variance, reshaped to (C, H, W) so any model accepts them).
    """
    n = len(sample)
    x = sample.reshape(n, -1).double().div_(255)
    d = x.shape[1]
    if d > MAX_WHITEN_DIM:
        raise CnnlabError(f"{mode} whitening is for small images: C*H*W is {d:,}, over {MAX_WHITEN_DIM:,}; use "
                          "--image-size 32 (or smaller) or another data.normalize")
    if n < 2:
        raise CnnlabError(f"{mode} whitening needs at least 2 training images")
    mean = x.mean(dim=0)
    xc = x - mean
    cov = xc.T @ xc / (n - 1)
    s, u = torch.linalg.eigh(cov)
    inv = (s.clamp_min(0) + eps).rsqrt()
    w = (u * inv) @ u.T if mode == "zca" else (u * inv).T.flip(0)
    return {"mean": mean.float(), "matrix": w.float().contiguous()}


class Preprocess:
    """uint8 (B, C, H, W) -> float (B, C, H, W) on `device`, optionally channels_last; a list of (C, H, W) images
    of different sizes -> a list. The one place a Normalization becomes arithmetic (training, evaluation, the
    doctor, bottleneck features, export)."""

    def __init__(self, norm: Normalization, device: torch.device, channels_last: bool = True) -> None:
        mode, mean, std, whitening = norm.mode, norm.mean, norm.std, norm.whitening
        if mode not in NORMALIZE_MODES:
            raise CnnlabError(f"unknown data.normalize '{mode}': use {', '.join(NORMALIZE_MODES)}")
        self.mode, self.channels_last = mode, channels_last
        if mode in WHITEN_MODES:
            if whitening is None:
                raise CnnlabError(f"data.normalize={mode} needs its fitted map (preprocess.safetensors in the run "
                                  "folder)")
            self.white_mean = whitening["mean"].to(device)
            self.white_matrix_t = whitening["matrix"].to(device).T.contiguous()
            return
        if mode == "per_image":
            mean, std = [0.0], [1.0]
        if mean is None or std is None:
            raise CnnlabError(f"data.normalize={mode} needs data.mean and data.std")
        m = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        s = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.scale = 1.0 / (255.0 * s)  # x * scale + shift == (x / 255 - mean) / std
        self.shift = -m / s

    def __call__(self, x: torch.Tensor | list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        if isinstance(x, (list, tuple)):  # images of different sizes (a detection batch): each on its own
            return [self(image[None])[0] for image in x]
        if self.mode in WHITEN_MODES:
            b = x.shape[0]
            flat = x.reshape(b, -1).float().div_(255).sub_(self.white_mean)
            out = (flat @ self.white_matrix_t).view(x.shape)
        else:
            out = torch.addcmul(self.shift, x.float(), self.scale)
            if self.mode == "per_image":
                out = out - out.mean(dim=(1, 2, 3), keepdim=True)
        if self.channels_last and out.dim() == 4:
            out = out.contiguous(memory_format=torch.channels_last)
        return out
