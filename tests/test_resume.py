"""Resume in-process: a crash emulated at the hardest point (after an epoch's CSV row and TensorBoard events were
written, before its checkpoint) with EarlyStopping / ReduceLROnPlateau state; a run with no checkpoint yet; a run
that stopped early; finished runs; refused flags; the second Ctrl-C; stale temporary files."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

import cnnlab
from cnnlab.cli import main
from cnnlab.errors import CnnlabError
from cnnlab.runs import RunDir
from cnnlab.train.autosave import RunCheckpointer, TrainingInterrupted
from cnnlab.train.callbacks import Callback

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: small tensors run fastest on one thread


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 150)
    x = rng.integers(0, 120, (150, 8, 8)).astype(np.uint8)
    for c in range(3):
        x[y == c, :, 2 * c : 2 * c + 3] += 100
    path = tmp_path_factory.mktemp("resume") / "tiny.npz"
    np.savez(path, x=x, y=y)
    return str(path)


OPTS = {"model": "seed_cnn", "epochs": 3, "batch_size": 12, "precision": "fp32", "quiet": True, "seed": 2,
        "checkpoint_every": 5, "early_stopping": 2, "reduce_lr": 1, "model_kwargs": {"dropout": 0.3}}


class Crash(BaseException):
    """Stands in for a power cut: nothing catches it."""


class CrashAtEpochEnd(Callback):
    """Raises Crash in on_epoch_end of `epoch` (after metrics.csv / TensorBoard wrote it, before its checkpoint)."""

    def __init__(self, epoch: int | None = None) -> None:
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs):
        if epoch == self.epoch:
            raise Crash


def without_time(history):
    return [{k: v for k, v in h.items() if k != "time"} for h in history]


def assert_same(a, b):
    for (name, wa), wb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(wa, wb), name
    assert without_time(a.history) == without_time(b.history)
    for key in ("val", "best", "epochs_run"):
        assert a.metrics.get(key) == b.metrics.get(key)


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    run = cnnlab.fit(data, out=str(tmp_path_factory.mktemp("ref") / "run"), callbacks=[CrashAtEpochEnd()], **OPTS)
    torch.set_num_threads(threads)
    return run


def tensorboard_steps(run_dir) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    return [s.step for s in acc.Scalars("loss/train")]


def test_crash_between_epoch_logs_and_checkpoint_resumes_exactly(data, tmp_path, reference):
    run_dir = tmp_path / "run"
    with pytest.raises(Crash):
        cnnlab.fit(data, out=str(run_dir), callbacks=[CrashAtEpochEnd(1)], **OPTS)
    state = torch.load(run_dir / "last_state.pt", weights_only=True)
    assert (state["epoch"], state["step"]) == (1, 10)  # the step checkpoint at the end of epoch 2's steps
    logged = list(csv.reader((run_dir / "metrics.csv").read_text().splitlines()))
    assert len(logged) == 3  # header + epochs 1 and 2 were logged
    (run_dir / ".last_state.pt.abc123.tmp").write_bytes(b"torn")  # a save killed half-way
    resumed = cnnlab.resume(run_dir, callbacks=[CrashAtEpochEnd()])
    assert_same(reference, resumed)
    rows = list(csv.reader((run_dir / "metrics.csv").read_text().splitlines()))
    assert [r[0] for r in rows[1:]] == [str(i + 1) for i in range(len(reference.history))]
    assert tensorboard_steps(run_dir) == list(range(1, len(reference.history) + 1))
    assert not (run_dir / ".last_state.pt.abc123.tmp").exists()
    with pytest.raises(CnnlabError, match="already finished"):
        cnnlab.resume(run_dir, callbacks=[CrashAtEpochEnd()])


def test_run_killed_before_its_first_checkpoint_starts_again_identically(data, tmp_path, reference):
    run_dir = tmp_path / "run"
    with pytest.raises(Crash):
        cnnlab.fit(data, out=str(run_dir), callbacks=[CrashAtEpochEnd(1)], **OPTS)
    for name in ("last_state.pt", "last.safetensors"):
        (run_dir / name).unlink()  # as if it died before saving anything
    resumed = cnnlab.fit(resume=run_dir, callbacks=[CrashAtEpochEnd()])
    assert_same(reference, resumed)
    assert json.loads((run_dir / "events.jsonl").read_text().splitlines()[0])["at"].startswith("the beginning")


def test_early_stopped_run_killed_before_metrics_finishes_without_training(data, tmp_path):
    opts = {**OPTS, "epochs": 12, "early_stopping": 1, "lr": 1e-5, "checkpoint_every": None}
    run_dir = tmp_path / "run"
    done = cnnlab.fit(data, out=str(run_dir), **opts)
    assert done.metrics["epochs_run"] < 12  # EarlyStopping stopped it
    (run_dir / "metrics.json").unlink()  # killed after the last checkpoint, before the final metrics
    again = cnnlab.resume(run_dir)
    assert again.metrics["epochs_run"] == done.metrics["epochs_run"]
    assert again.metrics["val"] == done.metrics["val"]


def test_resume_refuses_changes_and_non_runs(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path), "--epochs", "5", "--lr", "0.1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "drop --epochs, --lr" in err
    assert main(["train", "--resume", str(tmp_path)]) == 2
    assert "not a cnnlab run folder" in capsys.readouterr().err
    with pytest.raises(CnnlabError, match="epochs cannot be changed"):
        cnnlab.resume(tmp_path, epochs=4)


def test_resume_with_another_callback_list_is_refused(data, tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(Crash):
        cnnlab.fit(data, out=str(run_dir), callbacks=[CrashAtEpochEnd(0)], **OPTS)
    with pytest.raises(CnnlabError, match="pass the same callbacks"):
        cnnlab.resume(run_dir)


def test_second_ctrl_c_aborts_at_once_keeping_the_last_checkpoint(tmp_path):
    checkpointer = RunCheckpointer(tmp_path, tmp_path / RunDir.STATE, tmp_path / RunDir.LAST)
    checkpointer.saved_at = (2, 0)
    checkpointer._on_sigint(2, None)
    assert checkpointer.interrupt_requested
    with pytest.raises(TrainingInterrupted, match=r"aborted; the last checkpoint \(end of epoch 2\) is kept; "
                                                  r"resume with: cnnlab train --resume"):
        checkpointer._on_sigint(2, None)


def remove_stale_temporaries(path):
    return RunDir(path).remove_stale_temporaries()


def test_only_our_temporary_files_are_removed(tmp_path):
    for name in (".last_state.pt.x1.tmp", ".best.safetensors.x2.tmp", ".users-notes.tmp", "mine.tmp"):
        (tmp_path / name).write_text("x")
    assert sorted(remove_stale_temporaries(tmp_path)) == [".best.safetensors.x2.tmp", ".last_state.pt.x1.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".users-notes.tmp", "mine.tmp"]
