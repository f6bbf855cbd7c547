"""Acceptance on real data (issue 2): the quickstart, MNIST's 99%, and the Kaggle cactus CSV + zip."""

from __future__ import annotations

import csv
import json
import re

import pytest
from conftest import dataset_path, run_cli

import cnnlab


def test_quickstart_digits_command(tmp_path):
    """The README's main job: `cnnlab train digits` prints its run folder and reaches >= 95% val accuracy."""
    result = run_cli("train", "digits", "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    match = re.search(r"Run folder: (\S+)", result.stdout)
    assert match, result.stdout
    metrics = json.loads((tmp_path / match.group(1) / "metrics.json").read_text())
    assert metrics["val"]["accuracy"] >= 0.95


@pytest.mark.slow
def test_seed_cnn_on_mnist_reaches_99_percent_with_defaults(tmp_path):
    run = cnnlab.fit(str(dataset_path("mnist")), out=str(tmp_path / "mnist"), verbose=2, tensorboard=False)
    assert run.config.model.name == "seed_cnn"
    assert run.metrics["test"]["accuracy"] >= 0.990, run.metrics["test"]["accuracy"]


@pytest.mark.slow
def test_cactus_csv_and_zip_train_evaluate_and_predict_without_extracting(tmp_path):
    folder = dataset_path("aerial_cactus")
    before = sorted(p.name for p in folder.iterdir())
    run = cnnlab.fit(str(folder / "train.csv"), out=str(tmp_path / "cactus"), epochs=3, verbose=0, tensorboard=False)
    assert run.class_names == ["0", "1"] and run.metrics["val"]["accuracy"] > 0.9
    result = cnnlab.evaluate(run.dir)
    assert result["split"] == "val" and result["count"] == 2800
    assert result["accuracy"] == pytest.approx(run.metrics["val"]["accuracy"])
    rows = cnnlab.predict(run.dir, str(folder / "train.zip"), csv_path=str(tmp_path / "submission.csv"))
    assert len(rows) == 14_000
    with open(tmp_path / "submission.csv") as f:
        table = list(csv.reader(f))
    assert table[0] == ["id", "has_cactus", "prob_0", "prob_1"]
    assert re.fullmatch(r"[0-9a-f]+\.jpg", table[1][0]) and table[1][1] in ("0", "1")
    assert sorted(p.name for p in folder.iterdir()) == before  # nothing extracted beside the zip
