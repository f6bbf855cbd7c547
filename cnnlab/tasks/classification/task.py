"""The classification task: one class per image, from logits (softmax; sigmoids for the bce loss).

Owns what is classification-specific in a run: the loss (cross-entropy, focal, bce, the one-hot error losses, with
the balance plan's class weights) and GoogLeNet's auxiliary-logits rule; the metrics (confusion matrix, top-k, ROC /
PR AUC for two classes); the decision rule (argmax, or the two-class threshold of `--balance threshold`); the
balance plan, SMOTE, the samplers and mixup; the default monitor (val_accuracy, or val_roc_auc /
val_balanced_accuracy for imbalanced data) and the epoch line.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from cnnlab.config import Config
from cnnlab.data import balance
from cnnlab.errors import CnnlabError
from cnnlab.tasks.base import DATA_STEPS, MetricSet, Task, register_task
from cnnlab.tasks.classification import report
from cnnlab.tasks.classification.losses import ONEHOT_ERROR_LOSSES, create_loss
from cnnlab.tasks.classification.metrics import BinaryScores, ConfusionMetrics, per_class_report

AUX_LOSS_WEIGHT = 0.3  # auxiliary classifiers' share of the loss when the model does not say (Szegedy et al.)


def main_output(out: Any) -> torch.Tensor:
    """The main logits of a model output; a tuple is (logits, *auxiliary logits), e.g. GoogLeNet's."""
    return out[0] if isinstance(out, (tuple, list)) else out


def predicted_classes(out: Any) -> torch.Tensor:
    """Class indices (B,) of a model output by argmax of its main logits (the train metrics' rule)."""
    return main_output(out).argmax(dim=1)


def aux_loss_weight(model: nn.Module) -> float:
    """The model's `aux_loss_weight` (through a DistributedDataParallel wrapper's `.module`)."""
    inner = getattr(model, "module", model)
    return getattr(inner, "aux_loss_weight", AUX_LOSS_WEIGHT)


@register_task("classify", doc="one class per image: softmax (or sigmoid) classifiers")
class ClassificationTask(Task):
    """See the module docstring. `decision_threshold`: two classes, predict 1 when P(1) >= it (else argmax)."""

    name = "classify"
    steps = frozenset(DATA_STEPS)

    def __init__(self, cfg: Config, class_names: list[str]) -> None:
        super().__init__(cfg, class_names)
        self.decision_threshold: float | None = None
        self.balance: balance.BalancePlan | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    # -- loss -------------------------------------------------------------------------------------------------
    def build_loss(self, cfg: Config) -> nn.Module:
        """The loss of cfg.train, with the class weights of cfg.balance."""
        b = cfg.balance
        weight = torch.tensor(b.weights, dtype=torch.float32) if b.weights is not None else None
        extra = {"gamma": b.focal_gamma} if cfg.train.loss == "focal" else {}
        return create_loss(cfg.train.loss, self.num_classes, label_smoothing=cfg.train.label_smoothing,
                           weight=weight, **extra)

    def forward_loss(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """Loss and main logits. A tuple output is (logits, *auxiliary logits), e.g. GoogLeNet's aux heads."""
        output = model(x)
        if isinstance(output, (tuple, list)):
            logits, aux = output[0], output[1:]
            loss = self.loss_fn(logits, target) + aux_loss_weight(model) * sum(self.loss_fn(a, target) for a in aux)
            return loss, logits
        return self.loss_fn(output, target), output

    def forward_eval(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, Any]:
        out = self.outputs(model, x)
        return self.loss_fn(out, target), out.float()

    def outputs(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return main_output(model(x))

    # -- decisions ---------------------------------------------------------------------------------------------
    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Class probabilities (B, C) from logits: softmax, or normalised sigmoids for the bce loss."""
        if self.cfg.train.loss == "bce":
            probs = logits.float().sigmoid()
            return probs / probs.sum(dim=1, keepdim=True).clamp_min(1e-12)
        return logits.float().softmax(dim=1)

    predictions = probabilities  # what predict returns per image

    def decide(self, probs: torch.Tensor) -> torch.Tensor:
        """Predicted classes (B,): argmax, or for two classes with a decision threshold, P(1) >= threshold."""
        if self.decision_threshold is not None and probs.shape[1] == 2:
            return (probs[:, 1] >= self.decision_threshold).long()
        return probs.argmax(dim=1)

    # -- metrics and display -------------------------------------------------------------------------------------
    def metrics(self, device: torch.device, evaluation: bool = False) -> MetricSet:
        """Train: the confusion metrics of argmax. Evaluation of two classes: also the decision rule (the
        threshold) and ROC / PR AUC."""
        t = self.cfg.train
        onehot = t.loss in ONEHOT_ERROR_LOSSES
        if not evaluation or self.num_classes != 2:
            return MetricSet([ConfusionMetrics(self.num_classes, device, t.top_k, onehot)], device)
        decide = lambda logits: self.decide(self.probabilities(logits))  # noqa: E731
        return MetricSet([ConfusionMetrics(self.num_classes, device, t.top_k, onehot, decide),
                          BinaryScores(self.probabilities, device)], device)

    def monitor(self, has_val: bool) -> str:
        return "val_accuracy" if has_val else "accuracy"

    def headline(self, has_val: bool) -> list[str]:
        """loss and accuracy; balanced accuracy and macro F1 when imbalanced; ROC AUC and PR AUC for 2 classes."""
        extra = balance.headline_metrics(self.balance, self.num_classes, has_val) if self.balance else []
        return ["loss", "accuracy", "val_loss", "val_accuracy", *extra]

    def report(self, logs: dict[str, float], artefacts: dict[str, Any]) -> dict[str, Any]:
        out = dict(logs)
        if self.decision_threshold is not None:
            out["decision_threshold"] = self.decision_threshold
        cm = artefacts["confusion_matrix"]
        return {**out, "confusion_matrix": cm, "per_class": per_class_report(cm, self.class_names)}

    def fit_decision(self, predictor: Any, val_batches: Callable[[], Any]) -> dict[str, Any] | None:
        """`--balance threshold`, two classes: the threshold on P(class 1) maximizing val balanced accuracy (val:
        batches of a split in memory or streamed); used from now on to decide."""
        if "threshold" not in self.cfg.balance.methods:
            return None
        p, y = [], []
        for xb, yb in val_batches().batches():
            p.append(self.probabilities(predictor.outputs(xb))[:, 1].float().cpu())
            y.append(yb.cpu())
        value, score = balance.select_threshold(torch.cat(y).numpy(), torch.cat(p).numpy())
        self.decision_threshold = value
        return {"value": value, "chosen_on": "val", "criterion": "balanced_accuracy", "val_balanced_accuracy": score}

    def record(self) -> dict[str, Any]:
        return {"balance": self.balance.record()} if self.balance is not None else {}

    def final_notes(self, metrics: dict[str, Any]) -> list[str]:
        if "threshold" not in metrics:
            return []
        t = metrics["threshold"]
        return [f"balance: decision threshold P({self.class_names[1]}) >= {t['value']:.4f} (val balanced accuracy "
                f"{t['val_balanced_accuracy']:.4f}); evaluate and predict use it"]

    def final_keys(self, metrics: dict[str, Any]) -> list[str]:
        imbalanced = metrics.get("balance", {}).get("imbalanced")
        return ["accuracy", *(["balanced_accuracy", "f1"] if imbalanced else []), "roc_auc", "pr_auc"]

    def restore_decision(self, metrics: dict[str, Any]) -> None:
        self.decision_threshold = (metrics.get("threshold") or {}).get("value")

    # -- evaluate / predict / export ------------------------------------------------------------------------------
    def print_evaluation(self, result: dict[str, Any], console: Any) -> None:
        report.print_evaluation(result, self.class_names, console)

    def prediction_rows(self, ids: list[str], probs: torch.Tensor) -> list[dict[str, Any]]:
        return report.prediction_rows(ids, probs, self.decide(probs), self.class_names)

    def csv_columns(self, label_col: str) -> list[str]:
        return report.csv_columns(label_col, self.class_names)

    def csv_row(self, row: dict[str, Any]) -> list[Any]:
        return report.csv_row(row, self.class_names)

    def exporter(self) -> Any:
        """The graph head, model.json's output, the read-back and the parity gate."""
        from cnnlab.tasks.classification.outputs import ClassifierExport

        return ClassifierExport(bce=self.cfg.train.loss == "bce")

    # -- data steps ----------------------------------------------------------------------------------------------
    def plan(self, cfg: Config, data: Any, log: Callable[[str], None]) -> balance.BalancePlan:
        """The balance plan of the train split (counts, treatments, loss, class weights, monitor)."""
        self.balance = balance.plan_balance(cfg, data.splits["train"].y, self.num_classes, "val" in data.splits, log)
        return self.balance

    def training_data(self, cfg: Config, data: Any, log: Callable[[str], None]) -> Any:
        """SMOTE-family on pixels: the synthetic images join the in-memory train split."""
        plan = self.balance
        if plan is None or plan.synthetic is None:
            return data
        from cnnlab.data.dataset import DecodedSplit

        train_split = data.splits["train"]
        if not isinstance(train_split, DecodedSplit):
            raise CnnlabError(f"{plan.synthetic} on pixels needs the train split in memory; it is streamed because "
                              "it is over data.memory_budget_mb: use a smaller --image-size or another --balance")
        x, y = balance.apply_synthetic(plan, train_split.x, train_split.y, cfg.balance.smote_k, cfg.train.seed, log)
        return dataclasses.replace(data, splits={**data.splits, "train": DecodedSplit(x, y, [])})

    def sampler(self, cfg: Config, labels: torch.Tensor) -> Any:
        """The balance plan's oversampling / undersampling order, or None."""
        if self.balance is None or not self.balance.sampler:
            return None
        from cnnlab.data.samplers import create_sampler

        return create_sampler(self.balance.sampler, labels, self.num_classes, cfg.balance.epoch_samples)

    def resolve(self, final: Config, has_val: bool) -> None:
        """The balance plan's methods, class weights, loss and monitor into the final config."""
        plan = self.balance
        if plan is not None:
            final.balance.methods, final.balance.weights = list(plan.methods), plan.weights
            final.train.loss = plan.loss
            monitor = plan.monitor
        else:
            monitor = final.callbacks.monitor
        final.callbacks.monitor = monitor if monitor != "auto" else self.monitor(has_val)


def classification_task(classes: int | list[str], device: torch.device | str = "cpu",
                        **train: Any) -> ClassificationTask:
    """A classification task outside a run, e.g. for a hand-built Trainer or Predictor: the default config with
    `train` options set (loss, top_k, label_smoothing, ...), bound on `device`.

        task = classification_task(10)
        trainer = Trainer(Predictor(model, task, preprocess, device), optimizer)
    """
    names = [str(i) for i in range(classes)] if isinstance(classes, int) else list(classes)
    cfg = Config()
    for key, value in train.items():
        setattr(cfg.train, key, value)
    return ClassificationTask(cfg, names).setup(cfg, torch.device(device))
