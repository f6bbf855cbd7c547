"""The one training path: the resolved config is read-only and is what config.yaml holds, resolving it again
changes nothing, and callbacks see real per-step logs."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

import cnnlab
from cnnlab.config import config_from_dict
from cnnlab.runs import RunDir
from cnnlab.train.callbacks import Callback

pytestmark = pytest.mark.usefixtures("one_thread")
FAST = {"epochs": 2, "verbose": 0, "tensorboard": False, "precision": "fp32"}


class StepLogs(Callback):
    def __init__(self) -> None:
        self.seen: list[tuple[int, float, float, float]] = []

    def on_train_batch_end(self, step, logs):
        self.seen.append((step, float(logs["loss"]), logs["lr"], self.trainer.optimizer.param_groups[0]["lr"]))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    logs = StepLogs()
    out = tmp_path_factory.mktemp("session") / "run"
    result = cnnlab.fit("digits", out=str(out), callbacks=[logs], balance="class_weights", batch_size=256, **FAST)
    return result, logs


def test_the_resolved_config_is_read_only_and_is_what_config_yaml_holds(run):
    result, _ = run
    cfg = result.config
    assert cfg.frozen and cfg.train.frozen
    with pytest.raises(dataclasses.FrozenInstanceError, match="read-only"):
        cfg.train.lr = 1.0
    saved = yaml.safe_load((result.dir / RunDir.CONFIG).read_text())
    assert config_from_dict(saved).to_dict() == cfg.to_dict()
    # every decision is written out: nothing is left "auto"
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.callbacks.monitor, cfg.data.normalize) == (
        2, 256, "val_accuracy", "standardize")
    assert cfg.balance.methods == ["class_weights"] and len(cfg.balance.weights) == 10
    copy = cfg.copy()
    copy.train.lr = 0.5  # a copy can be changed
    assert cfg.train.lr == 0.003  # the run's own stays: adam's default, resolved to a number


def test_resolving_a_resolved_config_changes_nothing(run, tmp_path):
    result, _ = run
    again = cnnlab.fit(config=str(result.dir / RunDir.CONFIG), out=str(tmp_path / "again"), verbose=0)
    first, second = result.config.to_dict(), again.config.to_dict()
    first.pop("out"), second.pop("out")
    assert first == second


def test_callbacks_get_the_loss_and_learning_rate_of_every_step(run):
    result, logs = run
    steps_per_epoch = result.trainer.steps_per_epoch
    assert [s for s, *_ in logs.seen] == list(range(steps_per_epoch)) * 2
    assert all(loss > 0 for _, loss, _, _ in logs.seen)
    assert all(lr == current for _, _, lr, current in logs.seen)  # the rate after the step's schedule update
    assert len({lr for _, _, lr, _ in logs.seen}) > 1  # one-cycle: it changes from step to step
