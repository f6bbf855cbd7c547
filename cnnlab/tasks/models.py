"""Building a task's network from the config: a zoo / timm / layer-spec model with N outputs, its `--weights`
(a local checkpoint, strict unless allow_partial) and the transfer head the config asks for."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch import nn

from cnnlab.config import Config
from cnnlab.data.dataset import ImageGeometry
from cnnlab.errors import CnnlabError
from cnnlab.models import create_model
from cnnlab.transfer.heads import apply_head


def build_classifier(cfg: Config, num_outputs: int, geometry: ImageGeometry,
                     log: Callable[[str], None] | None = None, load_weights: bool = True) -> nn.Module:
    """create_model from cfg.model with `num_outputs` outputs, plus --weights (unless `load_weights` is off) and a
    transfer head."""
    h, w = geometry.size
    model = create_model(cfg.model.name, num_outputs, in_chans=geometry.channels, input_size=(h, w),
                         pretrained=cfg.model.pretrained and load_weights, **cfg.model.kwargs)
    if cfg.model.weights and load_weights:
        skip = cfg.model.skip_head if cfg.model.skip_head is not None else cfg.transfer.strategy != "none"
        report = load_initial_weights(model, cfg.model.weights, skip_head=skip, allow_partial=cfg.model.allow_partial)
        if log is not None and report is not None:
            log(str(report))
    apply_head(model, cfg, num_outputs)
    return model


def load_initial_weights(model: nn.Module, path: str, skip_head: bool = False, allow_partial: bool = False):
    """Load a checkpoint (strict unless allow_partial); skip_head keeps the model's new classifier."""
    if not Path(path).is_file():
        raise CnnlabError(f"weights file not found: {path}")
    from cnnlab.models.weights import load_weights  # third-party checkpoints (key mapping, reports)

    return load_weights(model, path, allow_partial=allow_partial, skip_head=skip_head)
