"""The task seam: a second task, written here and nowhere else, trains through the one training path.

`DigitValue` predicts the digit of scikit-learn's digits as a number (0..9) with an MSE loss: a regression, so
nothing of the classifier (argmax, confusion matrix, balance, mixup) may leak into its run. It plugs in as
`task="test_tasks:DigitValue"` (any importable cnnlab.tasks.Task subclass), which is also how a user adds one.
"""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from torch import nn

import cnnlab
from cnnlab.errors import CnnlabError
from cnnlab.runs import RunDir
from cnnlab.tasks import Metric, MetricSet, Task

pytestmark = pytest.mark.usefixtures("one_thread")
FAST = {"verbose": 0, "tensorboard": False, "precision": "fp32", "batch_size": 64}


class AbsoluteError(Metric):
    """mae: the mean absolute error of the predicted numbers; within_half: the share rounded to the right digit."""

    state_names = ("abs_sum", "hits", "count")

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.abs_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self.hits = torch.zeros((), dtype=torch.int64, device=self.device)
        self.count = torch.zeros((), dtype=torch.int64, device=self.device)

    def update(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        error = (outputs.float() - targets).abs()
        self.abs_sum += error.sum().double()
        self.hits += (error < 0.5).sum()
        self.count += len(targets)

    def compute(self) -> dict[str, float]:
        n = max(int(self.count), 1)
        return {"mae": float(self.abs_sum) / n, "within_half": int(self.hits) / n}


class DigitValue(Task):
    """The digit as a number: one output, MSE against the class name read as a float."""

    name = "digit_value"

    @property
    def num_outputs(self) -> int:
        return 1

    def targets(self, labels: torch.Tensor) -> torch.Tensor:
        values = torch.tensor([float(c) for c in self.class_names])
        return values[labels.cpu()].to(labels.device)

    def build_loss(self, cfg) -> nn.Module:
        return nn.MSELoss()

    def forward_loss(self, model, x, targets):
        out = self.outputs(model, x)
        return self.loss_fn(out.float(), targets), out

    def outputs(self, model, x):
        return model(x).squeeze(1)

    def metrics(self, device, evaluation=False) -> MetricSet:
        return MetricSet([AbsoluteError(device)], device)

    def monitor(self, has_val: bool) -> str:
        return "val_mae" if has_val else "mae"

    def headline(self, has_val: bool) -> list[str]:
        return ["loss", "mae", "val_loss", "val_mae", "val_within_half"]


@pytest.fixture(scope="module")
def value_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tasks") / "run"
    return cnnlab.fit("digits", task="test_tasks:DigitValue", epochs=12, out=str(out), **FAST)


def test_a_regression_task_written_in_one_file_trains_through_the_training_path(value_run):
    m = value_run.metrics
    # the spread of the digits around their mean (4.5) is 2.5: the model learns far below it
    assert m["monitor"] == "val_mae" and m["val"]["mae"] < 0.8 and m["val"]["within_half"] > 0.5
    assert m["epochs_run"] == 12 and value_run.history[-1]["val_mae"] < value_run.history[0]["val_mae"]
    assert "accuracy" not in m["val"] and "confusion_matrix" not in m["val"] and "balance" not in m
    saved = yaml.safe_load((value_run.dir / RunDir.CONFIG).read_text())
    assert saved["task"] == "test_tasks:DigitValue" and saved["callbacks"]["monitor"] == "val_mae"
    rows = (value_run.dir / RunDir.METRICS_CSV).read_text().splitlines()
    assert "val_mae" in rows[0].split(",") and len(rows) == 13


def test_the_run_folder_of_a_new_task_loads_and_evaluates_to_its_val_metrics(value_run):
    loaded = cnnlab.load_run(value_run.dir)
    assert type(loaded.task).__name__ == "DigitValue"
    result = loaded.evaluate()
    assert result["split"] == "val" and result["count"] == 359
    assert result["mae"] == pytest.approx(value_run.metrics["val"]["mae"], abs=1e-6)
    preds = loaded.predictor.predict(torch.zeros(2, 1, 8, 8, dtype=torch.uint8))
    assert preds.shape == (2,) and json.dumps(loaded.task.prediction_rows(["a", "b"], preds))


def test_a_task_without_class_targets_refuses_the_classifier_steps(tmp_path):
    with pytest.raises(CnnlabError, match="--balance"):
        cnnlab.fit("digits", task="test_tasks:DigitValue", epochs=1, balance="oversample", out=str(tmp_path / "a"),
                   **FAST)
    with pytest.raises(CnnlabError, match="mixup"):
        cnnlab.fit("digits", task="test_tasks:DigitValue", epochs=1, augment__mixup=0.2, out=str(tmp_path / "b"),
                   **FAST)
    with pytest.raises(CnnlabError, match="cannot be imported"):
        cnnlab.fit("digits", task="test_tasks:Nope", epochs=1, out=str(tmp_path / "c"), **FAST)
