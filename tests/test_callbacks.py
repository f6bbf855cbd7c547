"""Each callback's behaviour, driven by a scripted sequence of epoch logs on a real Trainer."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from torch import nn

from cnnlab.tasks.classification import classification_task
from cnnlab.train.callbacks import (
    CSVLogger,
    EarlyStopping,
    ModelCheckpoint,
    ReduceLROnPlateau,
    StopOnTarget,
    TensorBoard,
)
from cnnlab.train.optim import create_scheduler
from cnnlab.train.predictor import Predictor
from cnnlab.train.trainer import Trainer


def make_trainer(callbacks) -> Trainer:
    model = nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = Trainer(Predictor(model, classification_task(2), lambda x: x.float(), torch.device("cpu")), opt,
                      callbacks=callbacks)
    trainer.scheduler = create_scheduler("constant", opt, 100, 10)
    trainer.epochs = 10
    return trainer


def drive(trainer: Trainer, values: list[float], key: str = "val_loss") -> int:
    """Feed one log per epoch; returns how many epochs ran before a callback stopped training."""
    for cb in trainer.callbacks:
        cb.on_train_begin({})
    ran = 0
    for epoch, v in enumerate(values):
        with torch.no_grad():  # make the weights differ per epoch, to see which ones are kept
            trainer.model.weight.fill_(float(epoch))
        for cb in trainer.callbacks:
            cb.on_epoch_end(epoch, {key: v, "loss": v})
        ran += 1
        if trainer.stop_training:
            break
    for cb in trainer.callbacks:
        cb.on_train_end({})
    return ran


def test_model_checkpoint_saves_only_on_improvement(tmp_path: Path):
    from safetensors.torch import load_file

    ckpt = ModelCheckpoint(tmp_path / "best.safetensors", monitor="val_loss")
    trainer = make_trainer([ckpt])
    drive(trainer, [0.9, 0.5, 0.7, 0.6])
    assert ckpt.best == 0.5 and ckpt.best_epoch == 1
    assert torch.all(load_file(tmp_path / "best.safetensors")["weight"] == 1.0)


def test_model_checkpoint_max_mode_for_accuracy(tmp_path: Path):
    ckpt = ModelCheckpoint(tmp_path / "best.safetensors", monitor="val_accuracy")
    drive(make_trainer([ckpt]), [0.5, 0.8, 0.7], key="val_accuracy")
    assert ckpt.mode == "max" and ckpt.best_epoch == 1


def test_early_stopping_patience_and_restore_best():
    es = EarlyStopping(monitor="val_loss", patience=2, restore_best_weights=True)
    trainer = make_trainer([es])
    ran = drive(trainer, [1.0, 0.4, 0.5, 0.6, 0.3, 0.2])
    assert ran == 4 and es.stopped_epoch == 3 and es.best_epoch == 1
    assert torch.all(trainer.model.weight == 1.0)  # weights of the best epoch are back


def test_early_stopping_min_delta_counts_tiny_gains_as_no_gain():
    es = EarlyStopping(monitor="val_loss", patience=1, min_delta=0.1)
    assert drive(make_trainer([es]), [1.0, 0.95, 0.5]) == 2


def test_reduce_lr_on_plateau_lowers_base_lr_after_patience():
    rl = ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=2, min_lr=0.02)
    trainer = make_trainer([rl])
    drive(trainer, [1.0, 1.0, 1.0])  # two epochs without improvement
    assert trainer.base_lrs()[0] == pytest.approx(0.05)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.05)
    drive(trainer, [1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    assert trainer.base_lrs()[0] == pytest.approx(0.02)  # never below min_lr


def test_stop_on_target():
    cb = StopOnTarget(0.95, monitor="val_accuracy")
    assert drive(make_trainer([cb]), [0.5, 0.96, 0.97], key="val_accuracy") == 2 and cb.reached_epoch == 1


def test_csv_logger_rows_and_append(tmp_path: Path):
    path = tmp_path / "m.csv"
    drive(make_trainer([CSVLogger(path)]), [0.3, 0.2])
    drive(make_trainer([CSVLogger(path, append=True)]), [0.1])
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert [r["val_loss"] for r in rows] == ["0.3", "0.2", "0.1"] and rows[0]["epoch"] == "1"


def test_tensorboard_writes_scalars(tmp_path: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    drive(make_trainer([TensorBoard(tmp_path / "tb")]), [0.3, 0.2])
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert "loss/val" in acc.Tags()["scalars"]
    assert [e.value for e in acc.Scalars("loss/val")] == pytest.approx([0.3, 0.2])


def test_callback_state_round_trip():
    es = EarlyStopping(monitor="val_loss", patience=3)
    drive(make_trainer([es]), [1.0, 0.5, 0.7])
    fresh = EarlyStopping(monitor="val_loss", patience=3)
    fresh.load_state_dict(es.state_dict())
    assert (fresh.best, fresh.wait, fresh.best_epoch) == (0.5, 1, 1)
