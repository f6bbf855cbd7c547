"""The plan of a transfer run: `auto` resolved from the data, freezing and optimizer groups, features, the record.

- `feature-extract`: the pretrained backbone is frozen (eval mode); a new head trains on its cached bottleneck
  features (cnnlab.transfer.features): a linear layer, a small MLP with dropout, or scikit-learn's logistic
  regression (`--head logreg`).
- `fine-tune` (the last `unfreeze` blocks and the head) and `full` (every group): one optimizer parameter group
  per layer group with learning rate lr * lr_decay ** (groups between it and the head), batch-norm statistics
  frozen in frozen groups (and everywhere for batches under 16 with freeze_bn=auto), optional gradual
  unfreezing (head first, then one deeper group per epoch).
- `auto`: images per class and a linear probe on the cached features decide; the reasoning is printed and
  written to transfer.json in the run folder.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from cnnlab.config import Config
from cnnlab.data.dataset import DecodedSplit, ImageGeometry
from cnnlab.data.preprocess import Normalization, Preprocess
from cnnlab.models.base import has_conv
from cnnlab.train.callbacks import Callback
from cnnlab.train.optim import resolve_batch_size, resolve_lr
from cnnlab.transfer.features import FeatureSet, load_or_compute_features
from cnnlab.transfer.groups import (
    GradualUnfreeze,
    batchnorm_layers,
    classifier_param_names,
    discriminative_param_groups,
    freeze_batchnorm,
    layer_groups,
    set_trainable,
)
from cnnlab.transfer.heads import fit_logreg_head, zero_last_linear

# auto: thresholds on the smallest class of the training split and on the linear probe's balanced accuracy
AUTO_FEW_IMAGES = 100  # fewer per class: fine-tuning would overfit, train the head only (the course notes' regime 1)
AUTO_MANY_IMAGES = 5000  # more per class: enough data to train every layer
AUTO_PROBE_GOOD = 0.95  # the pretrained features already separate the classes: a new head is enough


@dataclass
class TransferPlan:
    """What `plan_transfer` decided for one run; `record` is written to transfer.json."""

    strategy: str
    features: FeatureSet | None = None
    param_groups: list[dict[str, Any]] | None = None
    callbacks: list[Callback] = field(default_factory=list)
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def feature_splits(self) -> dict[str, DecodedSplit] | None:
        """Feature extraction: the cached features as splits the head trains and is evaluated on."""
        if self.strategy != "feature-extract" or self.features is None:
            return None
        return {s: self.features.split(s) for s in self.features.x}

    @property
    def on_features(self) -> bool:
        """Only a new head trains, on cached features (no checkpointer, no augmentation, no sharding), and the
        full model is assembled after it."""
        return self.feature_splits is not None


def linear_probe(fs: FeatureSet, num_classes: int, seed: int = 0) -> dict[str, Any]:
    """Balanced accuracy of a logistic regression on the cached features: on val, else 3-fold on train."""
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import StratifiedKFold

    def score(xtr, ytr, xte, yte) -> float:
        w, b = fit_logreg_head(xtr, ytr, num_classes, seed=seed)
        return float(balanced_accuracy_score(yte.numpy(), (xte @ w.T + b).argmax(1).numpy()))

    if "val" in fs.x:
        return {"balanced_accuracy": round(score(fs.x["train"], fs.y["train"], fs.x["val"], fs.y["val"]), 4),
                "on": "val"}
    ytr = fs.y["train"].numpy()
    folds = StratifiedKFold(n_splits=min(3, int(np.bincount(ytr).min())), shuffle=True, random_state=seed)
    x, y = fs.x["train"], fs.y["train"]
    scores = [score(x[a], y[a], x[b], y[b]) for a, b in folds.split(x.numpy(), ytr)]
    return {"balanced_accuracy": round(float(np.mean(scores)), 4), "on": f"{len(scores)}-fold cross-validation"}


def choose_strategy(per_class: list[int], probe: dict[str, Any], unfreeze: int) -> tuple[str, list[str]]:
    """feature-extract with few images per class or separable features; full with many; else fine-tune."""
    fewest, acc = min(per_class), probe["balanced_accuracy"]
    facts = f"{fewest} training images in the smallest class; a linear probe reaches {acc:.1%} balanced accuracy " \
            f"({probe['on']})"
    if fewest < AUTO_FEW_IMAGES:
        return "feature-extract", [facts, f"under {AUTO_FEW_IMAGES} images per class, training more than a new "
                                          "head would overfit: feature extraction"]
    if acc >= AUTO_PROBE_GOOD:
        return "feature-extract", [facts, f"the pretrained features already separate the classes (probe >= "
                                          f"{AUTO_PROBE_GOOD:.0%}): a new head on them is enough"]
    if fewest >= AUTO_MANY_IMAGES:
        return "full", [facts, f"{AUTO_MANY_IMAGES}+ images per class are enough to train every layer, with "
                               "discriminative learning rates"]
    return "fine-tune", [facts, f"enough data to adapt the upper layers but not all: fine-tune the last {unfreeze} "
                                "blocks and a new head"]


def setup_layers(model: nn.Module, cfg: Config, strategy: str, n_train_images: int) -> TransferPlan:
    """Freeze, build the discriminative-LR optimizer groups and the batch-norm policy of fine-tune / full."""
    t = cfg.transfer
    groups = layer_groups(model)
    n_train = len(groups) if strategy == "full" else min(len(groups), t.unfreeze + 1)
    trainable, frozen = groups[len(groups) - n_train:], groups[: len(groups) - n_train]
    lr = resolve_lr(cfg.train.lr, cfg.train.optimizer)
    pgroups = discriminative_param_groups(model, groups, n_train, lr, t.lr_decay)
    bs = resolve_batch_size(cfg.train.batch_size, strategy)
    bs = n_train_images if bs == "full" else int(bs)
    flag = str(t.freeze_bn).lower()
    all_bn = flag == "true" or (flag == "auto" and bs < 16)
    frozen_names = {n for g in frozen for n in g}
    handles = freeze_batchnorm(batchnorm_layers(model, None if all_bn else frozen_names))
    callbacks: list[Callback] = []
    from_head = list(reversed(trainable))
    if t.gradual:
        bn_hooks = {} if all_bn else {d: freeze_batchnorm(batchnorm_layers(model, set(g)))
                                      for d, g in enumerate(from_head) if d > 0}
        callbacks.append(GradualUnfreeze(model, from_head, bn_hooks))
        set_trainable(model, set(from_head[0]))
    else:
        set_trainable(model, {n for g in trainable for n in g})
    record = {"layer_groups": len(groups), "trainable_groups": n_train,
              "group_lrs": [round(g["lr"], 8) for g in pgroups],
              "first_trainable": trainable[0][0] if trainable and trainable[0] else None,
              "frozen_batchnorm": len(handles), "batchnorm_all_frozen": all_bn, "gradual": t.gradual}
    return TransferPlan(strategy, param_groups=pgroups, callbacks=callbacks, record=record)


def plan_transfer(cfg: Config, model: nn.Module, splits: dict[str, Any], class_names: list[str],
                  geometry: ImageGeometry, norm: Normalization, device: torch.device, precision: str,
                  log: Callable[[str], None] = print) -> TransferPlan:
    """Decide `auto`, compute / reuse bottleneck features when needed, freeze layers and build LR groups."""
    t = cfg.transfer
    strategy, features, auto = t.strategy, None, None
    if strategy in ("feature-extract", "auto"):
        channels_last = has_conv(model)
        model.to(device)
        if channels_last:
            model.to(memory_format=torch.channels_last)
        preprocess = Preprocess(norm, device, channels_last)
        features = load_or_compute_features(model, cfg, splits, geometry, norm, preprocess, device, precision, log)
    num_classes = len(class_names)
    train_y = splits["train"].y.numpy()
    per_class = np.bincount(train_y, minlength=num_classes).tolist()
    if strategy == "auto":
        probe = linear_probe(features, num_classes, cfg.train.seed)
        strategy, reasons = choose_strategy(per_class, probe, t.unfreeze)
        auto = {"images_per_class": dict(zip(class_names, per_class)), "probe": probe,
                "thresholds": {"few_images": AUTO_FEW_IMAGES, "many_images": AUTO_MANY_IMAGES,
                               "probe_good": AUTO_PROBE_GOOD}, "reasoning": reasons, "chosen": strategy}
        for line in reasons:
            log(f"strategy auto: {line}")
        log(f"strategy auto: chose {strategy}")
    if cfg.model.skip_head is not False:
        zero_last_linear(model.get_classifier())  # a new head starts from "no opinion": loss log(C)
    if strategy == "feature-extract":
        set_trainable(model, classifier_param_names(model))
        plan = TransferPlan(strategy, record={"layer_groups": None, "trainable_groups": 1})
    else:
        if t.head == "logreg":
            log("note: --head logreg applies to feature extraction; fine-tuning trains a linear head")
        plan = setup_layers(model, cfg, strategy, len(train_y))
    plan.features = features
    plan.record = {"requested": t.strategy, "strategy": strategy, "head": t.head, **plan.record,
                   "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
                   "parameters": sum(p.numel() for p in model.parameters())}
    if features is not None:
        plan.record["features"] = {"cache_hit": features.hit, "seconds": round(features.seconds, 3),
                                   "key": features.key, "file": str(features.path) if features.path else None,
                                   "dim": int(features.x["train"].shape[1]), "views": t.views}
    if auto is not None:
        plan.record["auto"] = auto
    return plan
