"""The module that is exported: the trained model with, optionally, its preprocessing inside, and the task's head
(a classifier: logits, or class probabilities with the run's rule).

`--raw-input`: the graph takes the images as a client has them, uint8 (N, H, W, C), and does the layout change,
the dtype conversion and the run's normalization (per-channel mean / std, per-image centring, or the fitted
zca / pca whitening) itself, with the same arithmetic as training's `Preprocess`, so a client cannot get it wrong.
Without it the graph takes float (N, C, H, W) already normalized, as the model saw it in training.
"""

from __future__ import annotations

import torch
from torch import nn

from cnnlab.data.preprocess import WHITEN_MODES, Preprocess


class InputNormalize(nn.Module):
    """uint8 (N, H, W, C) -> the float (N, C, H, W) the model was trained on (Preprocess's arithmetic)."""

    def __init__(self, preprocess: Preprocess) -> None:
        super().__init__()
        self.mode = preprocess.mode
        if self.mode in WHITEN_MODES:
            self.register_buffer("white_mean", preprocess.white_mean.detach().cpu().clone())
            self.register_buffer("white_matrix_t", preprocess.white_matrix_t.detach().cpu().clone())
        else:
            self.register_buffer("scale", preprocess.scale.detach().cpu().clone())
            self.register_buffer("shift", preprocess.shift.detach().cpu().clone())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).float()  # (N, H, W, C) uint8 -> (N, C, H, W) float, 0..255
        if self.mode in WHITEN_MODES:
            flat = x.reshape(x.shape[0], -1) / 255 - self.white_mean
            return (flat @ self.white_matrix_t).reshape(x.shape)
        out = torch.addcmul(self.shift, x, self.scale)  # (x / 255 - mean) / std
        if self.mode == "per_image":
            out = out - out.mean(dim=(1, 2, 3), keepdim=True)
        return out


class ExportModule(nn.Module):
    """[InputNormalize] -> model -> the task's head (cnnlab.tasks: a classifier's main logits or probabilities)."""

    def __init__(self, model: nn.Module, preprocess: Preprocess | None, head: nn.Module) -> None:
        super().__init__()
        self.normalize = InputNormalize(preprocess) if preprocess is not None else None
        self.model, self.head = model, head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.normalize(images) if self.normalize is not None else images
        return self.head(self.model(x))
