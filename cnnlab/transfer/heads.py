"""New classifiers for transfer learning: linear / MLP heads, a head trained on cached features, logistic regression.

The run folder always holds the FULL model (backbone + trained head): FeatureTrainer trains only the head on
cached features but saves the whole model.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cnnlab.config import Config
from cnnlab.errors import CnnlabError
from cnnlab.models.weights import classifier_prefix
from cnnlab.train.checkpoint import save_weights
from cnnlab.train.predictor import Predictor
from cnnlab.train.trainer import Trainer


def build_head(in_features: int, num_classes: int, kind: str, hidden: int, dropout: float) -> nn.Module:
    """A new classifier on pooled features: Linear, or Dropout-Linear-ReLU-Dropout-Linear (mlp)."""
    if kind == "mlp":
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_features, hidden), nn.ReLU(inplace=True),
                             nn.Dropout(dropout), nn.Linear(hidden, num_classes))
    return nn.Linear(in_features, num_classes)


def apply_head(model: nn.Module, cfg: Config, num_classes: int) -> None:
    """Give a transfer run's model the head its config asks for (build_model calls it, so load_run does too)."""
    if cfg.transfer.strategy == "none" or cfg.transfer.head != "mlp":
        return
    prefix = classifier_prefix(model)
    old = model.get_classifier() if prefix else None
    if not isinstance(old, nn.Linear):
        raise CnnlabError(f"--head mlp needs a model whose classifier is one Linear layer ({type(model).__name__})")
    t = cfg.transfer
    parent = model.get_submodule(prefix.rsplit(".", 1)[0]) if "." in prefix else model
    setattr(parent, prefix.rsplit(".", 1)[-1], build_head(old.in_features, num_classes, "mlp", t.head_hidden,
                                                          t.head_dropout))


def zero_last_linear(head: nn.Module) -> None:
    """A new head starts from "no opinion" (loss log C): its last Linear layer is zeroed."""
    last = [m for m in head.modules() if isinstance(m, nn.Linear)]
    if last:
        with torch.no_grad():
            last[-1].weight.zero_()
            last[-1].bias.zero_()


class FeatureTrainer(Trainer):
    """A Trainer whose model is only the head, fed cached features; its checkpoints hold the full model."""

    def __init__(self, full_model: nn.Module, head_predictor: Predictor, optimizer: torch.optim.Optimizer,
                 **kwargs: Any) -> None:
        super().__init__(head_predictor, optimizer, **kwargs)
        self.full_model = full_model

    def save_weights(self, path: str | Path) -> None:
        if self.is_writer:
            save_weights(self.full_model, path)

    def fit(self, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        """One CPU thread: a head's ops are tiny, and with two threads every op waits at a barrier for the
        other (measured: 0.09 s per Adam step on a shared 2-core machine, instead of milliseconds)."""
        threads = torch.get_num_threads()
        if self.device.type == "cpu":
            torch.set_num_threads(1)
        try:
            return super().fit(*args, **kwargs)
        finally:
            torch.set_num_threads(threads)


def fit_logreg_head(x: torch.Tensor, y: torch.Tensor, num_classes: int, c: float = 0.1,
                    seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logistic regression (scikit-learn, standardised features, L2 with inverse strength `c`) as the weight
    (num_classes, D) and bias (num_classes,) of an equivalent Linear layer on the raw features."""
    from sklearn.linear_model import LogisticRegression

    xn = x.double().numpy()
    mean, std = xn.mean(0), xn.std(0) + 1e-6
    clf = LogisticRegression(C=c, max_iter=1000, random_state=seed).fit((xn - mean) / std, y.numpy())
    coef, intercept = clf.coef_ / std, clf.intercept_ - (clf.coef_ / std) @ mean
    weight, bias = np.zeros((num_classes, x.shape[1])), np.zeros(num_classes)
    classes = clf.classes_.astype(int)
    if coef.shape[0] == 1:  # binary: softmax([0, z]) == sigmoid(z)
        weight[classes[1]], bias[classes[1]] = coef[0], intercept[0]
    else:
        weight[classes], bias[classes] = coef, intercept
        missing = [k for k in range(num_classes) if k not in set(classes)]
        bias[missing] = -1e4  # a class absent from training is never predicted
    return torch.from_numpy(weight).float(), torch.from_numpy(bias).float()


def fit_logreg(trainer: FeatureTrainer, train: Any, val: Any, best_path: Path) -> list[dict[str, Any]]:
    """`--head logreg`: one scikit-learn fit instead of epochs; the Linear head gets its coefficients."""
    t0 = time.perf_counter()
    head = trainer.model
    if not isinstance(head, nn.Linear):
        raise CnnlabError("--head logreg needs the model's classifier to be one Linear layer")
    weight, bias = fit_logreg_head(train.x.cpu(), train.y.cpu(), len(trainer.task.class_names), seed=train.seed)
    with torch.no_grad():
        head.weight.copy_(weight.to(head.weight.device))
        head.bias.copy_(bias.to(head.bias.device))
    logs: dict[str, Any] = {"epoch": 1, **trainer.evaluate(train, prefix="")[0]}
    if val is not None:
        logs.update(trainer.evaluate(val)[0])
    logs["time"] = time.perf_counter() - t0
    trainer.history.append(logs)
    trainer.save_weights(best_path)
    trainer.log("logistic regression head: " + "  ".join(f"{k} {v:.4f}" for k, v in logs.items()
                                                             if k not in ("epoch",) and isinstance(v, float)))
    return trainer.history

