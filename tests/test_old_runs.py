"""Run folders written before the wave-2 architecture change (tests/data/runs_v0_1, cnnlab 0.1.0 at ecbe3df) still
load, evaluate, predict and resume with today's code."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import cnnlab
from cnnlab.runs import RunDir

OLD = Path(__file__).parent / "data" / "runs_v0_1"
pytestmark = pytest.mark.usefixtures("one_thread")  # the folders were written with one thread


def copy_run(name: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(OLD / name, tmp_path / name))


def test_an_old_run_folder_loads_and_evaluates_to_its_recorded_metrics(tmp_path):
    run = cnnlab.load_run(copy_run("finished", tmp_path))
    recorded = json.loads((OLD / "finished" / "metrics.json").read_text())
    assert run.class_names == [str(i) for i in range(10)]
    result = run.evaluate()
    assert result["split"] == "val" and result["count"] == 359  # the val split, recreated from the run's seed
    assert result["accuracy"] == pytest.approx(recorded["val"]["accuracy"], abs=1e-6)
    assert result["confusion_matrix"] == recorded["val"]["confusion_matrix"]


def test_an_old_run_folder_predicts(tmp_path):
    from sklearn.datasets import load_digits

    d = load_digits()
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(5):
        Image.fromarray(np.clip(d.images[i] * 16, 0, 255).astype(np.uint8), "L").save(folder / f"digit_{i}.png")
    rows = cnnlab.load_run(copy_run("finished", tmp_path)).predict([str(folder)], csv_path=str(tmp_path / "p.csv"))
    assert [r["id"] for r in rows] == [f"digit_{i}.png" for i in range(5)]
    assert all(abs(sum(r["probabilities"].values()) - 1) < 1e-5 for r in rows)
    assert (tmp_path / "p.csv").read_text().splitlines()[0].startswith("id,label,prob_0,prob_1")


def test_an_old_interrupted_run_resumes_to_the_weights_of_the_old_finished_run(tmp_path):
    run_dir = copy_run("interrupted", tmp_path)
    resumed = cnnlab.resume(run_dir, quiet=True)
    assert len(resumed.history) == 3
    new, old = load_file(run_dir / RunDir.LAST), load_file(OLD / "finished" / RunDir.LAST)
    assert new.keys() == old.keys()
    for key in old:  # the same run, continued: equal up to the last bits of float32 arithmetic on another CPU
        torch.testing.assert_close(new[key], old[key], rtol=1e-5, atol=1e-6)
    finished = json.loads((OLD / "finished" / "metrics.json").read_text())
    assert resumed.metrics["val"]["accuracy"] == pytest.approx(finished["val"]["accuracy"], abs=1e-6)
    rows = (run_dir / RunDir.METRICS_CSV).read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3"]  # epoch 2's stale row was written again, once
