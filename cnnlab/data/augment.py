"""Training-time augmentation on whole batches, as tensors, on the training device (GPU when there is one).

Two stages:
  1. Image transforms, in `AugmentedBatches` (between the batch iterator and the Trainer): random resized crop,
     rotation / scale / translation, colour jitter, JPEG-compression noise, random erasing (cutout) come from
     torchvision.transforms.v2.functional; flips and Gaussian noise are per-sample tensor ops. They run on the
     raw pixel scale, before preprocessing, so they mean the same under every data.normalize mode.
  2. mixup / cutmix, in the Trainer's `augment` hook ((x, y) -> (x, soft target)), on the preprocessed batch:
     every preprocessing mode is linear in the pixels, so mixing after it equals mixing before it. Train metrics
     still use the hard labels (Trainer.train_step returns them).

Per-sample randomness. v2 functional ops take one set of parameters per call, and v2 transform objects draw one
set per call from the global RNG. Calling them per image would put per-image Python work in the epoch loop, so a
batch is split into `groups` (default 16) contiguous chunks and each chunk gets its own parameters; flips and
noise are drawn per sample. The batch order is already shuffled, so chunks are random subsets.

Reproducibility. Every random number of step `step` of epoch `epoch` comes from generators seeded with a hash of
(seed, epoch, step): augmentation is a pure function of those, never touches the global RNG, and a resumed run
replays it exactly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as torch_f

from cnnlab.config import AugmentConfig
from cnnlab.config.schema import AUGMENT_PRESETS
from cnnlab.errors import CnnlabError

OPTIONS = tuple(f.name for f in dataclasses.fields(AugmentConfig) if f.name not in ("preset", "groups"))
PRESETS = AUGMENT_PRESETS  # the value of every option each preset sets (cnnlab/config/schema.py)
OFF = {"crop_scale": 1.0}  # the value of each option that means "off" (0 for the others)


def resolve_options(cfg: AugmentConfig) -> dict[str, float]:
    """The preset's values with every option the config sets on top; unset options are off."""
    if cfg.preset not in PRESETS:
        raise CnnlabError(f"unknown augmentation preset '{cfg.preset}': use {', '.join(PRESETS)}")
    opts = {k: float(OFF.get(k, 0.0)) for k in OPTIONS}
    opts.update(PRESETS[cfg.preset])
    for k in OPTIONS:
        v = getattr(cfg, k)
        if v is not None:
            opts[k] = float(v)
    for k in ("hflip", "vflip", "erase", "jpeg"):
        if not 0 <= opts[k] <= 1:
            raise CnnlabError(f"augment.{k} is a probability in [0, 1], got {opts[k]}")
    if not 0 < opts["crop_scale"] <= 1:
        raise CnnlabError(f"augment.crop_scale is the smallest crop area in (0, 1], got {opts['crop_scale']}")
    if any(opts[k] < 0 for k in OPTIONS):
        raise CnnlabError("augment options must not be negative")
    return opts


def step_seed(seed: int, epoch: int, step: int) -> int:
    """A 63-bit seed that is a pure function of (seed, epoch, step)."""
    digest = hashlib.blake2b(f"augment|{seed}|{epoch}|{step}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))


def _randint(g: torch.Generator, high: int) -> int:
    return int(torch.randint(0, high, (), generator=g))


def _tv_functional() -> Any:
    """torchvision.transforms.v2.functional, imported on first use: importing torchvision costs about 3 s (it pulls
    in torchvision.models, ops and torch._dynamo), which runs without augmentation (evaluate, predict, a head on
    cached features) should not pay."""
    import torchvision.transforms.v2.functional as F

    return F


class BatchAugment:
    """Image transforms of one batch: float (B, C, H, W) in [0, 1] -> same shape, from a seeded generator."""

    def __init__(self, options: dict[str, float], groups: int = 16):
        self.o, self.groups = options, max(1, int(groups))

    @property
    def active(self) -> bool:
        return any(self.o[k] != OFF.get(k, 0.0) for k in OPTIONS if k not in ("mixup", "cutmix"))

    def __call__(self, x: torch.Tensor, g: torch.Generator, noise_seed: int) -> torch.Tensor:
        F = _tv_functional()
        o = self.o
        chunks = list(x.split(math.ceil(len(x) / min(self.groups, len(x)))))
        x = torch.cat([self._group(c, g) for c in chunks])
        for key, flip in (("hflip", F.horizontal_flip), ("vflip", F.vertical_flip)):
            if o[key] > 0:
                mask = (torch.rand(len(x), generator=g) < o[key]).to(x.device)
                x = torch.where(mask.view(-1, 1, 1, 1), flip(x), x)
        if o["noise"] > 0:
            sigma = torch.rand(len(x), generator=g).mul_(o["noise"]).to(x.device).view(-1, 1, 1, 1)
            gen = torch.Generator(device=x.device).manual_seed(noise_seed)
            x = (x + sigma * torch.randn(x.shape, generator=gen, device=x.device)).clamp_(0, 1)
        return x

    def _group(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """One chunk: one draw of each transform's parameters, applied with v2 functional ops."""
        from torchvision.transforms import InterpolationMode

        F = _tv_functional()
        o = self.o
        h, w = x.shape[-2:]
        if o["crop_scale"] < 1:
            x = self._resized_crop(x, g, h, w)
        if o["rotate"] or o["translate"] or o["scale"]:
            angle = _uniform(g, -o["rotate"], o["rotate"])
            tx, ty = (round(_uniform(g, -o["translate"], o["translate"]) * s) for s in (w, h))
            scale = _uniform(g, 1 - o["scale"], 1 + o["scale"])
            x = F.affine(x, angle=angle, translate=[tx, ty], scale=scale, shear=[0.0, 0.0],
                         interpolation=InterpolationMode.BILINEAR)
        if o["color"]:
            c = o["color"]
            x = F.adjust_brightness(x, _uniform(g, max(0.0, 1 - c), 1 + c))
            x = F.adjust_contrast(x, _uniform(g, max(0.0, 1 - c), 1 + c))
            if x.shape[1] == 3:
                x = F.adjust_saturation(x, _uniform(g, max(0.0, 1 - c), 1 + c))
        if o["jpeg"] and float(torch.rand((), generator=g)) < o["jpeg"]:
            quality = int(torch.randint(30, 91, (), generator=g))
            u8 = x.mul(255).round_().to(torch.uint8).cpu()
            with warnings.catch_warnings():  # torchvision 0.29 deprecates its codecs in favour of TorchCodec
                warnings.simplefilter("ignore", DeprecationWarning)
                x = F.jpeg(u8, quality).to(x.device).float().div_(255)
        if o["erase"] and float(torch.rand((), generator=g)) < o["erase"]:
            area = _uniform(g, 0.02, 0.25) * h * w
            ratio = math.exp(_uniform(g, math.log(0.3), math.log(3.3)))
            eh, ew = min(h, max(1, round(math.sqrt(area * ratio)))), min(w, max(1, round(math.sqrt(area / ratio))))
            i, j = _randint(g, h - eh + 1), _randint(g, w - ew + 1)
            x = F.erase(x, i, j, eh, ew, v=torch.zeros((), device=x.device))
        return x

    def _resized_crop(self, x: torch.Tensor, g: torch.Generator, h: int, w: int) -> torch.Tensor:
        area = _uniform(g, self.o["crop_scale"], 1.0) * h * w
        ratio = math.exp(_uniform(g, math.log(3 / 4), math.log(4 / 3)))
        ch, cw = min(h, round(math.sqrt(area / ratio))), min(w, round(math.sqrt(area * ratio)))
        i, j = _randint(g, h - ch + 1), _randint(g, w - cw + 1)
        return _tv_functional().resized_crop(x, i, j, ch, cw, [h, w], antialias=True)


class Augmenter:
    """The augmentation of one run: wraps the training batches and provides the Trainer's mix hook."""

    def __init__(self, cfg: AugmentConfig, seed: int, num_classes: int):
        self.options = resolve_options(cfg)
        self.images = BatchAugment(self.options, cfg.groups)
        self.seed, self.num_classes = seed, num_classes
        self.pending: dict[str, Any] | None = None  # mix parameters of the batch last yielded

    @property
    def active(self) -> bool:
        return self.images.active or self.mixes

    @property
    def mixes(self) -> bool:
        return self.options["mixup"] > 0 or self.options["cutmix"] > 0

    def wrap(self, batches) -> AugmentedBatches:
        return AugmentedBatches(batches, self)

    def augment_batch(self, xb: torch.Tensor, epoch: int, step: int) -> torch.Tensor:
        """uint8 (B, C, H, W) -> augmented float (B, C, H, W) on the 0..255 scale (what Preprocess takes)."""
        h = step_seed(self.seed, epoch, step)
        g = torch.Generator().manual_seed(h)
        x = xb.float().div_(255)
        if self.images.active:
            x = self.images(x, g, noise_seed=h ^ 0x5DEECE66D)
        if self.mixes:
            self.pending = self._draw_mix(len(x), x.shape[-2:], np.random.default_rng(h), g)
        return x.mul_(255)

    def _draw_mix(self, b: int, hw, rng: np.random.Generator, g: torch.Generator) -> dict[str, Any]:
        mixup, cutmix = self.options["mixup"], self.options["cutmix"]
        use_cutmix = cutmix > 0 and (mixup <= 0 or rng.random() < 0.5)
        alpha = cutmix if use_cutmix else mixup
        lam = float(rng.beta(alpha, alpha))
        perm = torch.randperm(b, generator=g)
        box = None
        if use_cutmix:
            h, w = int(hw[0]), int(hw[1])
            cut = math.sqrt(1 - lam)
            ch, cw = round(h * cut), round(w * cut)
            cy, cx = int(rng.integers(h)), int(rng.integers(w))
            y0, y1, x0, x1 = max(cy - ch // 2, 0), min(cy + ch // 2, h), max(cx - cw // 2, 0), min(cx + cw // 2, w)
            box = (y0, y1, x0, x1)
            lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)  # the pasted area decides the target weights
        return {"perm": perm, "lam": lam, "box": box}

    def mix(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Trainer augment hook: mixup / cutmix of the preprocessed batch; target = class probabilities."""
        p = self.pending
        if p is None or len(p["perm"]) != len(x):
            return x, y
        perm = p["perm"].to(x.device)
        lam = p["lam"]
        if p["box"] is None:
            x = x * lam + x.index_select(0, perm) * (1 - lam)
        else:
            y0, y1, x0, x1 = p["box"]
            x = x.clone()
            x[:, :, y0:y1, x0:x1] = x.index_select(0, perm)[:, :, y0:y1, x0:x1]
        onehot = torch_f.one_hot(y, self.num_classes).float()
        return x, onehot * lam + onehot.index_select(0, perm) * (1 - lam)


class AugmentedBatches:
    """The training batches with the run's augmentation applied; same interface as TensorBatches."""

    def __init__(self, batches, augmenter: Augmenter):
        self.inner, self.augmenter = batches, augmenter

    def __len__(self) -> int:
        return len(self.inner)

    def batches(self, epoch: int = 0, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for step, (xb, yb) in enumerate(self.inner.batches(epoch, start_step), start=start_step):
            yield self.augmenter.augment_batch(xb, epoch, step), yb


def build_augmenter(cfg: AugmentConfig, seed: int, num_classes: int) -> Augmenter | None:
    """The run's Augmenter, or None when every option is off."""
    augmenter = Augmenter(cfg, seed, num_classes)
    return augmenter if augmenter.active else None


def describe(cfg: AugmentConfig) -> str:
    """One line naming the active options, for logs."""
    opts = resolve_options(cfg)
    on = [f"{k}={v:g}" for k, v in opts.items() if v != OFF.get(k, 0.0)]
    return f"{cfg.preset}: " + (", ".join(on) if on else "off")

