"""Training end to end through the Python API: run folder, determinism, optimizers, losses, evaluate, predict."""

from __future__ import annotations

import csv
import json

import pytest
import torch
import yaml
from conftest import make_image_folder, zip_folder
from safetensors.torch import load_file

import cnnlab
from cnnlab.errors import CnnlabError

FAST = {"epochs": 2, "verbose": 0, "tensorboard": False}


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "digits"
    return cnnlab.fit("digits", out=str(out), epochs=3, seed=0, verbose=0)


def test_run_folder_has_everything_to_rerun(digits_run):
    d = digits_run.dir
    for name in ("config.yaml", "classes.json", "metrics.csv", "metrics.json", "summary.txt", "best.safetensors",
                 "last.safetensors", "last_state.pt"):
        assert (d / name).is_file(), name
    assert any((d / "tensorboard").iterdir())
    cfg = yaml.safe_load((d / "config.yaml").read_text())
    assert cfg["train"]["seed"] == 0 and cfg["data"]["image_size"] == 8 and len(cfg["data"]["mean"]) == 1
    assert cfg["meta"]["torch"] and cfg["meta"]["cnnlab"] == cnnlab.__version__
    assert json.loads((d / "classes.json").read_text()) == [str(i) for i in range(10)]
    with open(d / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "val_f1", "top5_accuracy"} <= set(rows[0])
    metrics = json.loads((d / "metrics.json").read_text())
    assert metrics["best"]["epoch"] >= 1 and 0 < metrics["val"]["accuracy"] <= 1
    assert len(metrics["val"]["confusion_matrix"]) == 10
    assert "Total params" in (d / "summary.txt").read_text()


def test_same_seed_same_result_and_config_reruns(digits_run, tmp_path):
    again = cnnlab.fit(config=str(digits_run.dir / "config.yaml"), out=str(tmp_path / "again"), verbose=0)
    a = load_file(digits_run.dir / "last.safetensors")
    b = load_file(again.dir / "last.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert again.history[-1]["val_loss"] == digits_run.history[-1]["val_loss"]


def test_out_folder_holding_a_run_is_refused(digits_run):
    before = (digits_run.dir / "metrics.json").read_bytes()
    with pytest.raises(CnnlabError, match="already holds a run"):
        cnnlab.fit("digits", out=str(digits_run.dir), **FAST)
    assert (digits_run.dir / "metrics.json").read_bytes() == before


def test_evaluate_and_predict_from_the_run_folder_alone(digits_run, tmp_path):
    run = cnnlab.load_run(digits_run.dir)
    result = run.evaluate()
    assert result["split"] == "val" and result["accuracy"] == pytest.approx(digits_run.metrics["val"]["accuracy"])
    assert sum(map(sum, result["confusion_matrix"])) == result["count"] == 360 - 1
    assert [r["class"] for r in result["per_class"]] == run.class_names
    # loaded for inference: no optimizer (it would import torch._dynamo, ~2 s per command); training says how
    assert run.trainer.optimizer is None
    with pytest.raises(CnnlabError, match="weights="):
        run.trainer.fit(None, None, 1)


def test_a_run_validated_on_its_test_split_evaluates_that_split_as_val(tmp_path):
    """data.val_source=test trains on all of train: `evaluate --split val` is the test split, not a part of train."""
    make_image_folder(tmp_path / "imgs", per_class=6, splits=("train", "test"))
    run = cnnlab.fit(str(tmp_path / "imgs"), out=str(tmp_path / "run"), overrides=["data.val_source=test"], **FAST)
    result = cnnlab.load_run(run.dir).evaluate(split="val")
    assert result["count"] == 12 and result["accuracy"] == pytest.approx(run.metrics["val"]["accuracy"])


def test_relative_data_path_is_stored_absolute_so_the_run_resumes_from_anywhere(tmp_path, monkeypatch):
    make_image_folder(tmp_path / "imgs", per_class=4)
    monkeypatch.chdir(tmp_path)
    run = cnnlab.fit("imgs", out="run", val_split=0.25, **FAST)
    cfg = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert cfg["data"]["source"] == str((tmp_path / "imgs").resolve())
    monkeypatch.chdir("/")
    result = cnnlab.load_run(tmp_path / run.dir).evaluate()  # the val split, recreated from the run folder alone
    assert result["split"] == "val" and result["count"] == 2  # 25% of 8 images


def test_batch_gd_and_sgd_step_counts(tmp_path):
    folder = make_image_folder(tmp_path / "d", per_class=8)
    full = cnnlab.fit(str(folder), out=str(tmp_path / "full"), batch_size="full", val_split=0.25, **FAST)
    assert full.trainer.steps_per_epoch == 1  # batch gradient descent: one step per epoch
    one = cnnlab.fit(str(folder), out=str(tmp_path / "one"), batch_size=1, val_split=0.25, **FAST)
    assert one.trainer.steps_per_epoch == 12  # stochastic gradient descent: one step per image


@pytest.mark.parametrize("optimizer,schedule", [("sgd", "step"), ("adam", "cosine"), ("adamw", "onecycle"),
                                                ("rmsprop", "constant")])
def test_every_optimizer_and_schedule_learns(tmp_path, optimizer, schedule):
    run = cnnlab.fit("digits", out=str(tmp_path / "r"), optimizer=optimizer, schedule=schedule, warmup_epochs=0.5,
                     epochs=3, verbose=0, tensorboard=False, precision="fp32")
    assert run.history[-1]["loss"] < run.history[0]["loss"]
    assert run.metrics["val"]["accuracy"] > 0.3  # chance is 0.1


@pytest.mark.parametrize("loss", ["cross_entropy", "bce", "mse", "mae"])
def test_every_loss_trains(tmp_path, loss):
    run = cnnlab.fit("digits", out=str(tmp_path / "r"), loss=loss, label_smoothing=0.1 if loss == "cross_entropy"
                     else 0.0, epochs=3, verbose=0, tensorboard=False)
    assert run.history[-1]["loss"] < run.history[0]["loss"]
    if loss in ("mse", "mae"):
        assert "val_mse" in run.history[-1] and "val_mae" in run.history[-1]


def test_nesterov_and_weight_decay_reach_the_optimizer(tmp_path):
    run = cnnlab.fit("digits", out=str(tmp_path / "r"), optimizer="sgd", lr=0.05, nesterov=True, weight_decay=1e-4,
                     **FAST)
    decay, no_decay = run.trainer.optimizer.param_groups
    assert decay["nesterov"] and decay["weight_decay"] == 1e-4
    # weights decay; biases do not (as Keras's kernel_regularizer), unless train.decay_bias_and_norm is set
    shapes = sorted(tuple(p.shape) for p in no_decay["params"])
    assert no_decay["weight_decay"] == 0.0 and shapes and all(len(s) == 1 for s in shapes)
    assert all(p.dim() > 1 for p in decay["params"])
    both = cnnlab.fit("digits", out=str(tmp_path / "b"), weight_decay=1e-4,
                      overrides=["train.decay_bias_and_norm=true"], **FAST)
    assert [g["weight_decay"] for g in both.trainer.optimizer.param_groups] == [1e-4]


def test_callbacks_from_flags(tmp_path):
    run = cnnlab.fit("digits", out=str(tmp_path / "r"), epochs=30, target=0.5, verbose=0, tensorboard=False)
    assert len(run.history) < 30 and run.history[-1]["val_accuracy"] >= 0.5


def test_zip_folder_trains_and_predicts_with_csv(tmp_path):
    folder = make_image_folder(tmp_path / "src", per_class=10)
    archive = zip_folder(folder, tmp_path / "pets.zip")
    run = cnnlab.fit(str(archive), out=str(tmp_path / "r"), epochs=2, verbose=0, tensorboard=False)
    rows = run.predict([str(folder / "cat")], csv_path=str(tmp_path / "pred.csv"))
    assert len(rows) == 10 and set(rows[0]["probabilities"]) == {"cat", "dog"}
    with open(tmp_path / "pred.csv") as f:
        table = list(csv.reader(f))
    assert table[0] == ["id", "label", "prob_cat", "prob_dog"] and len(table) == 11
    assert abs(float(table[1][2]) + float(table[1][3]) - 1) < 1e-4
    zipped = cnnlab.predict(run.dir, str(archive))
    assert len(zipped) == 20


def test_timm_model_adapts_classes_and_channels(tmp_path):
    model = cnnlab.create_model("timm:resnet10t", 3, in_chans=1)
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 3)
    with pytest.raises(CnnlabError, match="timm has no model"):
        cnnlab.create_model("timm:resnet1800", 3)
