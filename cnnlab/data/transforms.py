"""Batch preprocessing on tensors: uint8 (B, C, H, W) -> normalised float, channels_last."""

from __future__ import annotations

import torch


class Normalize:
    """(x / 255 - mean) / std per channel, computed as one fused multiply-add on the device."""

    def __init__(self, mean: list[float], std: list[float], device: torch.device, channels_last: bool = True):
        m = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        s = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.scale = 1.0 / (255.0 * s)  # x * scale + shift == (x / 255 - mean) / std
        self.shift = -m / s
        self.channels_last = channels_last

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.addcmul(self.shift, x.float(), self.scale)
        if self.channels_last and out.dim() == 4:
            out = out.contiguous(memory_format=torch.channels_last)
        return out
