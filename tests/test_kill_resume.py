"""Kill-and-resume with real signals: `cnnlab train` subprocesses are SIGKILLed (3 points: early in epoch 1, right
after the first epoch boundary, late in epoch 3) or sent SIGINT, resumed with `cnnlab train --resume`, and must end
with the same weights (torch.equal on every tensor), metrics.json and metrics.csv (wall times excluded) as a run
that was never interrupted. All children of a round run at once to keep the wall time low on a busy machine.

Each child signals itself at a known global step (CNNLAB_SIGNAL_AT, cnnlab.train.faults.SignalAt): no poll races
the run, so the kill points, and the checkpoints they leave, are the same on every machine.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
# 640 train images / batch 16 = 40 steps per epoch, 120 in all; a checkpoint every 4 steps.
TRAIN_ARGS = ["--model", "seed_cnn", "--epochs", "3", "--batch-size", "16", "--checkpoint-every", "4", "--seed", "3",
              "--precision", "fp32", "--no-tensorboard", "--quiet"]
# the global step after which the child kills itself; none is a checkpoint step, so each resume replays steps
KILL_POINTS = {"early_epoch1": 6, "after_epoch1_boundary": 42, "late_epoch3": 93}
SIGINT_STEP = 50


def make_tiny_npz(path: Path, n: int = 800, size: int = 28, classes: int = 4, seed: int = 0) -> Path:
    """Learnable 4-class images: a bright band whose position is the class, on noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = rng.integers(0, 90, (n, size, size)).astype(np.uint8)
    band = size // classes
    for c in range(classes):
        x[y == c, c * band : (c + 1) * band, :] += 120
    np.savez(path, x=x, y=y)
    return path


def child_env() -> dict[str, str]:
    # One thread in every process: the same reduction order everywhere, and no oversubscription on 2 cores.
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def start_train(data: Path, out: Path, signal_at: str | None = None) -> subprocess.Popen:
    env = child_env() if signal_at is None else {**child_env(), "CNNLAB_SIGNAL_AT": signal_at}
    return subprocess.Popen([sys.executable, "-m", "cnnlab", "train", str(data), *TRAIN_ARGS, "--out", str(out)],
                            env=env, cwd=out.parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def saved_step(run: Path) -> int:
    """Global step of the run's checkpoint on disk (-1 when there is none)."""
    path = run / "last_state.pt"
    return int(torch.load(path, map_location="cpu", weights_only=True)["global_step"]) if path.exists() else -1


def same_run(a: Path, b: Path) -> None:
    """Assert two run folders end identically: weights bit for bit, metrics (wall times excluded)."""
    for name in ("last.safetensors", "best.safetensors"):
        wa, wb = load_file(a / name), load_file(b / name)
        assert wa.keys() == wb.keys()
        different = [k for k in wa if not torch.equal(wa[k], wb[k])]
        assert not different, f"{name}: tensors differ: {different}"

    def metrics(run: Path) -> dict:
        m = json.loads((run / "metrics.json").read_text())
        for key in ("wall_time_s", "train_time_s"):
            m.pop(key)
        m["final"].pop("time")
        return m

    def rows(run: Path) -> list[list[str]]:
        table = list(csv.reader((run / "metrics.csv").read_text().splitlines()))
        i = table[0].index("time")
        return [r[:i] + r[i + 1 :] for r in table]

    assert metrics(a) == metrics(b)
    assert rows(a) == rows(b)
    epochs = [r[0] for r in rows(b)[1:]]
    assert epochs == [str(i + 1) for i in range(len(epochs))]  # every epoch logged once, none written twice


def events(run: Path) -> list[dict]:
    path = run / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture(scope="module")
def rounds(tmp_path_factory) -> dict:
    """Round 1: the uninterrupted run, three runs SIGKILLed and one sent SIGINT, all at once.
    Round 2: `cnnlab train --resume` of the four interrupted runs, at once."""
    base = tmp_path_factory.mktemp("kill")
    data = make_tiny_npz(base / "tiny.npz")
    t0 = time.perf_counter()
    procs = {"reference": start_train(data, base / "reference")}
    procs |= {name: start_train(data, base / name, f"step={step},signal=KILL") for name, step in KILL_POINTS.items()}
    procs["sigint"] = start_train(data, base / "sigint", f"step={SIGINT_STEP},signal=INT")
    first = {}
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=300)
        first[name] = {"rc": proc.returncode, "stderr": err, "state_step": saved_step(base / name)}
    assert first.pop("reference")["rc"] == 0, first
    resumes = {name: subprocess.Popen([sys.executable, "-m", "cnnlab", "train", "--resume", str(base / name)],
                                      env=child_env(), cwd=base, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True) for name in first}
    second = {}
    for name, proc in resumes.items():
        out, err = proc.communicate(timeout=300)
        second[name] = {"rc": proc.returncode, "stdout": out, "stderr": err}
    return {"base": base, "reference": base / "reference", "first": first, "second": second,
            "seconds": time.perf_counter() - t0}


@pytest.mark.slow
@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_sigkill_then_resume_matches_uninterrupted_run(rounds, point):
    run = rounds["base"] / point
    killed = rounds["first"][point]
    assert killed["rc"] == -signal.SIGKILL, killed["stderr"][-2000:]
    assert killed["state_step"] == KILL_POINTS[point] // 4 * 4  # the last checkpoint (every 4 steps) before the kill
    resumed = rounds["second"][point]
    assert resumed["rc"] == 0, resumed["stderr"][-2000:]
    resume_events = [e for e in events(run) if e["event"] == "resume"]
    assert len(resume_events) == 1 and "beginning" not in resume_events[0]["at"]  # continued, not restarted
    same_run(rounds["reference"], run)
    assert not list(run.glob(".*.tmp"))  # no temporary file of a killed save is left


@pytest.mark.slow
def test_sigint_stops_after_the_step_saves_and_resumes(rounds):
    run = rounds["base"] / "sigint"
    first = rounds["first"]["sigint"]
    assert first["rc"] == 130
    assert f"interrupted; resume with: cnnlab train --resume {run}" in first["stderr"]
    assert "Traceback" not in first["stderr"]
    assert first["state_step"] == SIGINT_STEP  # saved at the step it stopped (read before the resume)
    assert [e["event"] for e in events(run)][:1] == ["interrupted"]
    assert rounds["second"]["sigint"]["rc"] == 0, rounds["second"]["sigint"]["stderr"][-2000:]
    same_run(rounds["reference"], run)
