"""From the data settings of a Config to decoded splits and what the data decides: geometry and statistics.

Reads the config, never writes it: the image size, channels and per-channel statistics found here are facts that
`cnnlab.recipe.resolve` puts into the run's final config.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from cnnlab.config import Config
from cnnlab.data.cache import decode_split_cached
from cnnlab.data.dataset import DecodedSplit, ImageGeometry, infer_geometry, set_max_image_pixels
from cnnlab.data.preprocess import WHITEN_MODES, Normalization, channel_stats_of, fit_whitening, stats_indices
from cnnlab.data.readers import DataSource, load_source, skipped_summary
from cnnlab.data.stream import StreamedSplit, sample_images, stream_split
from cnnlab.errors import CnnlabError


@dataclass
class PreparedData:
    """Decoded (or streamed) splits of a source, with what the data decided."""

    source: DataSource
    geometry: ImageGeometry
    splits: dict[str, DecodedSplit | StreamedSplit]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    normalization: Normalization | None = None  # mode and statistics from the train split (model: see recipe)

    @property
    def class_names(self) -> list[str]:
        return self.source.class_names

    @property
    def whitening(self) -> dict[str, torch.Tensor] | None:
        """The fitted zca / pca map (preprocess.safetensors in the run folder)."""
        return self.normalization.whitening if self.normalization is not None else None


def normalize_mode(cfg: Config) -> str:
    """data.normalize with `auto` decided: a pretrained model expects the statistics it was trained with."""
    if cfg.data.normalize == "auto":
        return "model" if cfg.transfer.strategy != "none" else "standardize"
    return cfg.data.normalize


def prepare_data(cfg: Config, log: Callable[[str], None] = print) -> PreparedData:
    """Read and decode every split of cfg.data.source; find the geometry and the training statistics.

    Splits that fit data.memory_budget_mb are held in memory; larger data is streamed (cnnlab.data.stream).
    """
    d = cfg.data
    use_test = d.val_source == "test"
    set_max_image_pixels(d.max_image_pixels)
    src = load_source(d.source, val_split=0.0 if use_test else d.val_split, seed=cfg.train.seed, images=d.images,
                      id_col=d.id_col, label_col=d.label_col, skip_missing=d.skip_missing)
    if use_test:  # as Keras's validation_data=(x_test, y_test): every train image is used; test is watched
        if "test" not in src.splits:
            raise CnnlabError(f"--set data.val_source=test needs a test split, and {d.source} has none")
        src.splits["val"] = src.splits.pop("test")
        log("note: validating on the test split (data.val_source=test): do not tune on it")
    channels = d.channels or (3 if cfg.model.pretrained else None)  # pretrained models expect RGB
    geom = infer_geometry(src, d.image_size, channels)
    h, w = geom.size
    total = sum(len(s) for s in src.splits.values()) * geom.channels * h * w / 2**20
    stream = total > d.memory_budget_mb
    if stream:
        log(f"the decoded images need {total:,.0f} MB, over data.memory_budget_mb={d.memory_budget_mb:,}: "
            "streaming them with a DataLoader")
        splits = {name: stream_split(src, split, geom, d.resize, d.cache) for name, split in src.splits.items()}
    else:
        splits = {name: decode_split_cached(src, split, geom, d.resize, d.cache, log)
                  for name, split in src.splits.items()}
    skipped = list(src.skipped) + [s for sp in splits.values() for s in sp.skipped]
    if skipped:
        log(f"warning: skipped {len(skipped)} files ({skipped_summary(skipped)}); listed in skipped.txt")
    normalization = data_statistics(cfg, splits["train"], geom)
    return PreparedData(src, geom, splits, skipped, normalization)


def data_statistics(cfg: Config, train: DecodedSplit | StreamedSplit, geom: ImageGeometry) -> Normalization:
    """The normalization the data decides: train mean / std, a fitted whitening map, or the fixed ones of scale /
    per_image. For `model` the statistics come from the model (recipe.resolve_normalization); given values win."""
    d = cfg.data
    mode = normalize_mode(cfg)
    mean, std = d.mean, d.std
    needs_sample = mode in WHITEN_MODES or (mode in ("standardize", "zero_center") and (mean is None or std is None))
    per_image = geom.channels * geom.size[0] * geom.size[1]
    sample = sample_images(train, stats_indices(len(train), image_values=per_image)) if needs_sample else None
    if mode in WHITEN_MODES:
        whitening = fit_whitening(sample[stats_indices(len(sample), 5_000)], mode, d.whiten_eps)
        return Normalization(mode, mean, std, whitening)
    if mean is None or std is None:
        if mode in ("standardize", "zero_center"):
            mean, std = channel_stats_of(sample)
            if mode == "zero_center":
                std = [1.0] * geom.channels
        elif mode in ("scale", "per_image"):
            mean, std = [0.0] * geom.channels, [1.0] * geom.channels
    return Normalization(mode, mean, std)
