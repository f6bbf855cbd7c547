"""What a kind of target means to the loop: the `Task` interface, metric objects, and the task registry.

The training loop (cnnlab.train.trainer, cnnlab.train.predictor) moves opaque `(inputs, targets)` batches, as
fastai's `xb` / `yb`: it never looks inside a target. Everything that does is the task's:

- the model it trains (`build_model`: a classifier with one output per class, a detector, ...);
- the targets: what the batches carry (`make_batches`, which also collates them and moves them to the device);
- the loss and the forward pass that produces it (`forward_loss` in train mode, `forward_eval` in eval mode): a
  classifier returns logits (GoogLeNet also auxiliary logits), a torchvision detector takes `(images, targets)` in
  train mode and returns a dict of losses, and in eval mode returns a list of `{boxes, labels, scores}`;
- its metrics, as objects (`Metric`: update / compute / reset / all_reduce / state_dict, Keras's compiled
  metrics); a metric may keep every prediction of the pass and compute once at the end (COCO mAP);
- the decision rule (`decide`: class indices from logits, boxes above a score, ...) and what an evaluation
  returns besides its numbers (`artefacts`: a confusion matrix, per-class AP);
- the default monitor and the metrics of the epoch line;
- which of the data steps apply (`DATA_STEPS`: stratified split, balance, sampler, SMOTE, mixup, a head on cached
  features) and the task's own plan for them (`plan`).

A task is created once per run from its config and the data's class names (`create_task`); built-in tasks
register with `@register_task("name")`, and `task: package.module:Class` names any importable subclass.
"""

from __future__ import annotations

import copy
import importlib
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from cnnlab.config import Config
from cnnlab.config.schema import TASK_MODULES
from cnnlab.data.dataset import ImageGeometry
from cnnlab.errors import CnnlabError
from cnnlab.registry import Registry
from cnnlab.train import dist

# The data steps a task may ask for; session applies only those in `Task.steps`.
DATA_STEPS = {
    "balance": "class counts, class weights and the balance plan (cnnlab.data.balance)",
    "sampler": "an oversampling / undersampling batch order",
    "synthetic": "SMOTE-family images added to the train split",
    "mixup": "mixup / cutmix on batches (soft targets)",
    "features": "feature extraction: a new head trained on cached bottleneck features",
    "threshold": "a decision threshold picked on the val split",
}

TASKS = Registry("task", sources=TASK_MODULES, decorator="register_task")
register_task = TASKS.register


class Metric:
    """One metric of a pass over data (a train epoch or an evaluation).

    `update` runs every batch and must not synchronise with the host (keep sums as tensors on the device);
    `compute` runs once per pass. The tensors named in `state_names` are what `all_reduce` sums over the ranks of
    a distributed run and what `state_dict` saves with a mid-epoch checkpoint; a metric that keeps whole
    predictions (ROC AUC, mAP) overrides `all_reduce` to gather them instead.
    """

    state_names: tuple[str, ...] = ()

    def reset(self) -> None: ...

    def update(self, outputs: Any, targets: Any) -> None: ...

    def compute(self) -> dict[str, float]:
        return {}

    def artefacts(self) -> dict[str, Any]:
        """What an evaluation returns besides numbers (e.g. a confusion matrix)."""
        return {}

    def running(self, count: int) -> dict[str, float]:
        """Short values for the progress bar while a pass runs (a host sync: called a few times a second)."""
        return {}

    def all_reduce(self) -> None:
        for name in self.state_names:
            dist.all_reduce_sum(getattr(self, name))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: getattr(self, k).detach().cpu().clone() for k in self.state_names}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k in self.state_names:
            ref = getattr(self, k)
            setattr(self, k, state[k].to(ref.device).clone())


class MeanLoss(Metric):
    """The mean of the batch losses, weighted by batch size: `loss` (the first metric of every MetricSet)."""

    state_names = ("loss_sum",)

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)

    def add(self, loss: torch.Tensor, n: int) -> None:
        self.loss_sum += loss.detach().double() * n

    def value(self, count: int) -> float:
        return float(self.loss_sum) / count

    def running(self, count: int) -> dict[str, float]:
        return {"loss": self.value(count)}


class MetricSet:
    """The metrics of one pass, updated together: the mean loss, then the task's metrics, over `count` samples."""

    def __init__(self, metrics: Iterable[Metric], device: torch.device,
                 size: Callable[[Any], int] = len) -> None:
        self.loss = MeanLoss(device)
        self.metrics = list(metrics)
        self.size = size  # samples in a batch of targets
        self.count = 0

    def reset(self) -> None:
        self.count = 0
        for m in (self.loss, *self.metrics):
            m.reset()

    @torch.no_grad()
    def update(self, outputs: Any, targets: Any, loss: torch.Tensor | None) -> None:
        n = self.size(targets)
        self.count += n
        if loss is not None:
            self.loss.add(loss, n)
        for m in self.metrics:
            m.update(outputs, targets)

    def compute(self, prefix: str = "") -> dict[str, float]:
        """Every metric's values (`loss` first), named with `prefix` (val_); {} for an empty pass."""
        if self.count == 0:
            return {}
        logs = {"loss": self.loss.value(self.count)}
        for m in self.metrics:
            logs.update(m.compute())
        return {prefix + k: v for k, v in logs.items()}

    def artefacts(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for m in self.metrics:
            out.update(m.artefacts())
        return out

    def running(self) -> dict[str, float]:
        if self.count == 0:
            return {}
        out = self.loss.running(self.count)
        for m in self.metrics:
            out.update(m.running(self.count))
        return out

    def loss_is_finite(self) -> bool:
        """Whether the summed loss of the pass so far is finite (one host sync)."""
        return not self.count or bool(torch.isfinite(self.loss.loss_sum))

    def all_reduce(self) -> MetricSet:
        """Every rank's part summed (or gathered) into this set; a no-op in a single process."""
        if dist.active():
            for m in (self.loss, *self.metrics):
                m.all_reduce()
            self.count = int(dist.all_reduce_sum(torch.tensor([self.count], dtype=torch.int64)).item())
        return self

    def state_dict(self) -> dict[str, Any]:
        """The running sums (copies, in one flat dict), so a resumed epoch reports the same train metrics."""
        state: dict[str, Any] = {"count": self.count}
        for m in (self.loss, *self.metrics):
            state.update(m.state_dict())
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.count = int(state["count"])
        for m in (self.loss, *self.metrics):
            m.load_state_dict(state)

    def reduced_copy(self) -> MetricSet:
        """The sums over every rank, leaving this rank's own untouched (for a checkpoint mid-epoch)."""
        return copy.deepcopy(self).all_reduce()


class Task:
    """The interface between the loop and a kind of target; see the module docstring. Subclasses override what
    their targets need; the defaults here are those of image-level targets held as one tensor per split."""

    name = ""
    steps: frozenset[str] = frozenset()  # the DATA_STEPS that apply

    def __init__(self, cfg: Config, class_names: list[str]) -> None:
        self.cfg = cfg
        self.class_names = list(class_names)

    # -- the model ---------------------------------------------------------------------------------------------
    @property
    def num_outputs(self) -> int:
        """Outputs of the model's last layer."""
        return len(self.class_names)

    def build_model(self, cfg: Config, geometry: ImageGeometry, log: Callable[[str], None] | None = None,
                    load_weights: bool = True) -> nn.Module:
        """A zoo / timm / layer-spec model with `num_outputs` outputs, its `--weights` and transfer head."""
        from cnnlab.tasks.models import build_classifier

        return build_classifier(cfg, self.num_outputs, geometry, log, load_weights)

    # -- targets and batches ----------------------------------------------------------------------------------
    def targets(self, labels: torch.Tensor) -> Any:
        """A split's targets from its labels (class indices from the reader); the default keeps them."""
        return labels

    def make_batches(self, split: Any, batch_size: int | str, shuffle: bool, seed: int, device: torch.device,
                     workers: int = 2, sampler: Any = None, shard: tuple[int, int] | None = None) -> Any:
        """Batches of (uint8 images, targets) of a split, on `device` (cnnlab.data.stream.make_batches)."""
        from cnnlab.data.stream import make_batches

        return make_batches(split, batch_size, shuffle, seed, device, workers, sampler=sampler, shard=shard,
                            targets=self.targets)

    # -- loss -------------------------------------------------------------------------------------------------
    def setup(self, cfg: Config, device: torch.device) -> Task:
        """A copy of the task bound to the run's resolved config on `device`, with its loss (`loss_fn`): each
        Predictor holds its own (a loaded run may predict on the CPU and on a GPU at once)."""
        bound = copy.copy(self)
        bound.cfg = cfg
        bound.loss_fn = self.build_loss(cfg).to(device)
        return bound

    def build_loss(self, cfg: Config) -> nn.Module:
        """The loss module `forward_loss` applies (its config: `cfg`)."""
        raise NotImplementedError(f"{type(self).__name__} builds no loss")

    def forward_loss(self, model: nn.Module, x: Any, targets: Any) -> tuple[torch.Tensor, Any]:
        """Train mode: (loss, outputs for the train metrics) of a batch."""
        out = model(x)
        return self.loss_fn(out, targets), out

    def forward_eval(self, model: nn.Module, x: Any, targets: Any) -> tuple[torch.Tensor | None, Any]:
        """Eval mode (no gradients): (loss or None, outputs for the metrics) of a batch."""
        out = self.outputs(model, x)
        return self.loss_fn(out, targets), out

    def outputs(self, model: nn.Module, x: Any) -> Any:
        """Eval mode: what the model predicts for a batch (its main output)."""
        return model(x)

    def merge_outputs(self, parts: list[Any]) -> Any:
        """The outputs of a batch split into parts (after a CUDA out-of-memory): tensors concatenated, lists chained."""
        if isinstance(parts[0], torch.Tensor):
            return torch.cat(parts)
        return [item for part in parts for item in part]

    # -- metrics, decisions, display ----------------------------------------------------------------------------
    def metrics(self, device: torch.device, evaluation: bool = False) -> MetricSet:
        """The metrics of a train epoch, or with `evaluation` of an evaluation pass."""
        return MetricSet([], device)

    def predictions(self, outputs: Any) -> Any:
        """What `predict` returns for a batch of outputs (a classifier: class probabilities)."""
        return outputs

    def decide(self, predictions: Any) -> Any:
        """The decision from predictions (class indices, boxes above the score threshold, ...)."""
        return predictions

    def monitor(self, has_val: bool) -> str:
        """The metric `callbacks.monitor: auto` resolves to."""
        return "val_loss" if has_val else "loss"

    def headline(self, has_val: bool) -> list[str]:
        """The metrics of the epoch line, in order (those a pass computed)."""
        return ["loss", "val_loss"]

    def report(self, logs: dict[str, float], artefacts: dict[str, Any]) -> dict[str, Any]:
        """What `evaluate` returns for a pass: its numbers and artefacts (a classifier adds per-class rows)."""
        return {**logs, **artefacts}

    def fit_decision(self, predictor: Any, val_batches: Callable[[], Any]) -> dict[str, Any] | None:
        """After training: a decision rule fitted on the val split (a classifier's two-class threshold), used from
        then on; its record for metrics.json, or None."""
        return None

    def record(self) -> dict[str, Any]:
        """What the task decided for the run, for metrics.json (a classifier: its balance record)."""
        return {}

    def final_notes(self, metrics: dict[str, Any]) -> list[str]:
        """Lines printed before a run's last line (a classifier: its decision threshold)."""
        return []

    def final_keys(self, metrics: dict[str, Any]) -> list[str]:
        """The val / test metrics named in a run's last line ("Done in ... Best weights: val ...")."""
        return [k for k in self.headline(False) if not k.startswith("val_")]

    def restore_decision(self, metrics: dict[str, Any]) -> None:
        """A loaded run: the decision `fit_decision` recorded in its metrics.json, back in force."""

    # -- evaluate / predict / export outside the loop --------------------------------------------------------
    def print_evaluation(self, result: dict[str, Any], console: Any) -> None:
        """`cnnlab evaluate`'s output for a result of `report`: its numbers on one line."""
        numbers = "  ".join(f"{k} {v:.4f}" for k, v in result.items() if isinstance(v, float))
        console.print(f"{result['data']} [{result['split']}], {result['count']} images: {numbers}", soft_wrap=True,
                      markup=False)

    def prediction_rows(self, ids: list[str], predictions: Any) -> list[dict[str, Any]]:
        """`predict`'s rows: one per image (id, then what the task predicts)."""
        return [{"id": ident, "prediction": p.tolist()} for ident, p in zip(ids, predictions)]

    def csv_columns(self, label_col: str) -> list[str]:
        return ["id", label_col]

    def csv_row(self, row: dict[str, Any]) -> list[Any]:
        return [row["id"], row["prediction"]]

    def exporter(self) -> Any:
        """What `cnnlab export` needs of the task (cnnlab.tasks.classification.outputs for a classifier)."""
        raise CnnlabError(f"cnnlab export does not export {self.name or type(self).__name__} models yet")

    # -- data steps (session applies what `steps` names) ----------------------------------------------------
    def plan(self, cfg: Config, data: Any, log: Callable[[str], None]) -> Any:
        """The task's data decisions before the resolve (the classifier's balance plan); None when none."""
        if cfg.balance.methods and "balance" not in self.steps:
            raise CnnlabError(f"--balance treats class imbalance; the {self.name or type(self).__name__} task has no "
                              "classes to balance: drop --balance")
        return None

    def training_data(self, cfg: Config, data: Any, log: Callable[[str], None]) -> Any:
        """The prepared data training uses (a classifier adds SMOTE images); the default: `data` itself."""
        return data

    def sampler(self, cfg: Config, labels: Any) -> Any:
        """A batch order other than the seeded shuffle (oversampling), or None."""
        return None

    def augmenter(self, cfg: Config) -> Any:
        """The training augmentation of cfg.augment (cnnlab.data.augment), or None; mixup / cutmix only for
        tasks whose steps name it (they mix class targets)."""
        from cnnlab.data.augment import build_augmenter

        augmenter = build_augmenter(cfg.augment, cfg.train.seed, self.num_outputs)
        if augmenter is not None and augmenter.mixes and "mixup" not in self.steps:
            raise CnnlabError(f"mixup / cutmix mix class targets; the {self.name or type(self).__name__} task "
                              "has none: drop --set augment.mixup / cutmix")
        return augmenter

    def resolve(self, final: Config, has_val: bool) -> None:
        """Write the task's decisions into the run's final config (before it is frozen)."""
        if final.callbacks.monitor == "auto":
            final.callbacks.monitor = self.monitor(has_val)


def create_task(cfg: Config, class_names: list[str]) -> Task:
    """The task of `cfg.task`: a registered name (`classify`), or `package.module:Class` for a Task subclass."""
    name = cfg.task
    if ":" in name:
        module, _, attr = name.partition(":")
        try:
            cls = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise CnnlabError(f"task '{name}' cannot be imported ({e}); name a Task subclass as "
                              "package.module:Class on the Python path") from None
        if not (isinstance(cls, type) and issubclass(cls, Task)):
            raise CnnlabError(f"task '{name}' is not a subclass of cnnlab.tasks.Task")
        return cls(cfg, class_names)
    return TASKS.get(name)(cfg, class_names)
