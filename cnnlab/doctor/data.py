"""Check 1, the data: counts and imbalance, duplicates and train / val leakage, images against the model's
parameter count when training from scratch, and the input statistics after preprocessing (zero-centred)."""

from __future__ import annotations

import hashlib

import torch

from cnnlab.config import Config
from cnnlab.data.dataset import DecodedSplit
from cnnlab.data.stream import sample_images
from cnnlab.doctor.checks import FAIL, OK, WARN, Check
from cnnlab.prepare import PreparedData

MAX_HASHED = 20_000  # images per split hashed for duplicates (from the decoded pixels: no file is read again)
PARAMS_PER_IMAGE = 2_000  # from scratch, more parameters per training image than this overfits heavily
TOO_SMALL = 10  # ten times that: training from scratch is hopeless, the doctor fails the check


def from_scratch(cfg: Config) -> bool:
    return not cfg.model.weights and not cfg.model.pretrained and cfg.transfer.strategy == "none"


def count_checks(data: PreparedData) -> list[Check]:
    train = data.splits["train"]
    counts = torch.bincount(train.y, minlength=len(data.class_names)).tolist()
    small, large = min(counts), max(counts)
    ratio = large / max(small, 1)
    value = f"{len(train)} train images, {len(counts)} classes, {small}-{large} per class (ratio {ratio:.1f})"
    if small == 0:
        return [Check("data: counts", FAIL, value, "every class in train",
                      f"class '{data.class_names[counts.index(0)]}' has no training image")]
    if ratio >= 3:
        return [Check("data: counts", WARN, value, "imbalance ratio < 3",
                      "imbalanced: --balance class_weights (or oversample)")]
    return [Check("data: counts", OK, value, "imbalance ratio < 3")]


def split_hashes(split) -> dict[str, int]:
    n = min(len(split), MAX_HASHED)
    if not isinstance(split, DecodedSplit):
        return {}
    x = split.x[:n].contiguous().numpy()
    return {hashlib.blake2b(x[i].tobytes(), digest_size=12).hexdigest(): i for i in range(n)}


def duplicate_checks(data: PreparedData) -> list[Check]:
    """Exact pixel duplicates inside train and across train / val (as cnnlab inspect, on the decoded images)."""
    train = data.splits["train"]
    if not isinstance(train, DecodedSplit):
        return [Check("data: duplicates", OK, "skipped (streamed data)", "no duplicates",
                      "cnnlab data inspect DATA finds duplicates in streamed data")]
    hashes = split_hashes(train)
    hashed = min(len(train), MAX_HASHED)
    dup = hashed - len(hashes)
    leaks = 0
    for name, split in data.splits.items():
        if name != "train":
            leaks += sum(h in hashes for h in split_hashes(split))
    value = f"{dup} duplicates in train, {leaks} val/test images also in train"
    if leaks:
        return [Check("data: leakage", FAIL, value, "no held-out image in train",
                      "the held-out metrics overstate accuracy: remove the duplicates from one side "
                      "(cnnlab data inspect lists them)")]
    if dup > 0.01 * hashed:  # a share of the images looked at, not of the whole split
        return [Check("data: duplicates", WARN, value, "under 1% duplicates", "deduplicate the training images")]
    return [Check("data: duplicates", OK, value, "no duplicates, no leakage")]


def capacity_check(cfg: Config, data: PreparedData, params: int) -> list[Check]:
    """Images against parameters from scratch: a warning past PARAMS_PER_IMAGE per image, a failure (with the
    command to run instead) past TOO_SMALL times that."""
    n = len(data.splits["train"])
    value = f"{n} images and {params / 1e6:.2f} M parameters" + (" from scratch" if from_scratch(cfg) else "")
    expected = f"under {PARAMS_PER_IMAGE:,} parameters per image from scratch"
    if from_scratch(cfg) and params > TOO_SMALL * PARAMS_PER_IMAGE * n:
        return [Check("data: size vs model", FAIL, value, expected,
                      f"far too few images to train this model from scratch ({params / n:,.0f} parameters per "
                      f"image); start from pretrained weights: cnnlab train {cfg.data.source} --model timm:resnet18 "
                      "--pretrained --strategy auto (offline: --model NAME --weights CHECKPOINT --strategy auto)")]
    if from_scratch(cfg) and params > PARAMS_PER_IMAGE * n:
        return [Check("data: size vs model", WARN, value, expected,
                      "expect heavy overfitting; use --strategy feature-extract with pretrained weights "
                      "(--pretrained or --weights), augmentation, or a smaller model")]
    return [Check("data: size vs model", OK, value, expected)]


def input_check(data: PreparedData, preprocess, n: int = 512) -> tuple[list[Check], dict]:
    """Per-channel mean / std of the preprocessed inputs: about 0 and 1 (the notes' zero-centring). Under a
    pretrained model's own mean / std (normalize `model`) off-centre statistics are expected: they are what the
    model was trained with, so they are reported, not judged."""
    train = data.splits["train"]
    idx = torch.linspace(0, len(train) - 1, min(n, len(train))).long()
    x = preprocess(sample_images(train, idx)).float()
    mean = x.mean(dim=(0, 2, 3)).tolist()
    std = x.std(dim=(0, 2, 3)).tolist()
    value = "mean " + ",".join(f"{m:+.2f}" for m in mean) + " std " + ",".join(f"{s:.2f}" for s in std)
    stats = {"mean": mean, "std": std}
    if getattr(preprocess, "mode", None) == "model":
        return [Check("data: input statistics", OK, value + " (the pretrained model's mean / std)",
                      "the statistics the model was trained with")], stats
    if max(abs(m) for m in mean) > 0.3 or any(s < 0.3 or s > 3 for s in std):
        return [Check("data: input statistics", WARN, value, "mean ~0, std ~1 per channel",
                      "zero-centre the inputs: --normalize standardize (or model with pretrained weights)")], stats
    return [Check("data: input statistics", OK, value, "mean ~0, std ~1 per channel")], stats


def data_checks(cfg: Config, data: PreparedData, params: int, preprocess, duplicates: bool = True,
                counts: bool = True) -> tuple[list[Check], dict]:
    """Check 1: counts, duplicates, size vs model, input statistics; a failed size-vs-model check comes first (it
    decides the rest: no other fix helps a model that cannot learn from this little data)."""
    capacity = capacity_check(cfg, data, params)
    checks = (count_checks(data) if counts else []) + (duplicate_checks(data) if duplicates else [])
    checks = capacity + checks if capacity[0].status == FAIL else checks + capacity
    inputs, stats = input_check(data, preprocess)
    return checks + inputs, stats
