"""Faults injected in-process: NaN / Inf losses and gradients (rollback, lower lr, stop with advice), simulated CUDA
out-of-memory (batch split with gradient accumulation), CPU out-of-memory, a full disk while checkpointing, a
crash half-way through a save, and a write error elsewhere in the run folder."""

from __future__ import annotations

import errno
import math

import numpy as np
import pytest
import torch

import cnnlab
from cnnlab.errors import CnnlabError
from cnnlab.tasks.classification import classification_task
from cnnlab.train import checkpoint as ckpt
from cnnlab.train.callbacks import Callback
from cnnlab.train.faults import EventLog
from cnnlab.train.predictor import Predictor
from cnnlab.train.state import check_state
from cnnlab.train.trainer import Trainer

STEPS_PER_EPOCH = 10  # 160 train images / batch 16


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: small tensors run fastest on one thread


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 200)
    x = rng.integers(0, 90, (200, 8, 8)).astype(np.uint8)
    for c in range(4):
        x[y == c, 2 * c : 2 * c + 2, :] += 120
    path = tmp_path_factory.mktemp("faults") / "tiny.npz"
    np.savez(path, x=x, y=y)
    return str(path)


def train(data, out, **kwargs):
    opts = {"model": "seed_cnn", "epochs": 2, "batch_size": 16, "precision": "fp32", "quiet": True,
            "tensorboard": False, "seed": 1, **kwargs}
    return cnnlab.fit(data, out=str(out), **opts)


def events(run_dir) -> list[dict]:
    return EventLog(run_dir / "events.jsonl").read()


class InjectNaN(Callback):
    """Multiplies the model output by NaN at global step `at` (once, or at every step from then on)."""

    def __init__(self, at: int, always: bool = False) -> None:
        self.at, self.always, self.fired = at, always, 0

    def on_train_begin(self, logs):
        def hook(module, inputs, output):
            t = self.trainer
            if module.training and t.global_step >= self.at and (self.always or not self.fired):
                self.fired += 1
                return output * float("nan")
            return output

        self.handle = self.trainer.model.register_forward_hook(hook)

    def on_train_end(self, logs):
        self.handle.remove()


class InjectInfGrad(Callback):
    """Makes one parameter's gradient infinite at global step `at` (the loss stays finite)."""

    def __init__(self, at: int) -> None:
        self.at, self.fired = at, 0

    def on_train_begin(self, logs):
        param = next(self.trainer.model.parameters())

        def hook(grad):
            if self.trainer.global_step == self.at and not self.fired:
                self.fired += 1
                return grad * float("inf")
            return grad

        self.handle = param.register_hook(hook)

    def on_train_end(self, logs):
        self.handle.remove()


# ------------------------------------------------------------------------------------------------------------
# NaN / Inf


def test_nan_loss_rolls_back_to_epoch_start_lowers_lr_and_finishes(data, tmp_path):
    inject = InjectNaN(at=STEPS_PER_EPOCH + 5)  # step 6 of epoch 2
    run = train(data, tmp_path / "run", callbacks=[inject])
    assert inject.fired == 1
    assert len(run.history) == 2 and all(math.isfinite(h["loss"]) for h in run.history)
    (event,) = [e for e in events(run.dir) if e["event"].startswith("nonfinite")]
    assert event["event"] == "nonfinite_rollback" and event["what"] == "loss"
    assert event["epoch"] == 2 and event["step"] == 6 and event["rollback_to"] == {"epoch": 2, "step": 0}
    assert event["lr_after"] == pytest.approx(event["lr_before"] * 0.5)
    assert all(torch.isfinite(p).all() for p in run.model.parameters())
    state = torch.load(run.dir / "last_state.pt", weights_only=True)
    assert state["faults"] == {"count": 1, "lr_scale": 0.5}  # a resumed run keeps counting


def test_rollback_goes_to_the_last_step_checkpoint(data, tmp_path):
    run = train(data, tmp_path / "run", callbacks=[InjectNaN(at=7)], checkpoint_every=4)
    (event,) = [e for e in events(run.dir) if e["event"] == "nonfinite_rollback"]
    assert event["rollback_to"] == {"epoch": 1, "step": 4}


def test_persistent_nan_stops_with_advice_after_the_retries(data, tmp_path):
    with pytest.raises(CnnlabError, match="after 3 rollbacks") as info:
        train(data, tmp_path / "run", callbacks=[InjectNaN(at=3, always=True)])
    message = str(info.value)
    assert "learning rate may be too high" in message and "bad values" in message and "fp16" in message
    assert "\n" not in message
    kinds = [e["event"] for e in events(tmp_path / "run")]
    assert kinds == ["nonfinite_rollback"] * 3 + ["nonfinite_stop"]
    lrs = [e["lr_after"] for e in events(tmp_path / "run")[:3]]
    assert lrs[1] == pytest.approx(lrs[0] * 0.5) and lrs[2] == pytest.approx(lrs[0] * 0.25)


def test_policy_stop_stops_at_the_first_nan(data, tmp_path):
    with pytest.raises(CnnlabError, match="loss became nan at epoch 1, step 3"):
        train(data, tmp_path / "run", callbacks=[InjectNaN(at=2)], train__nan_policy="stop")
    assert [e["event"] for e in events(tmp_path / "run")] == ["nonfinite_stop"]


def test_infinite_gradient_with_finite_loss_is_caught_before_the_update(data, tmp_path):
    inject = InjectInfGrad(at=4)
    run = train(data, tmp_path / "run", callbacks=[inject], epochs=1)
    assert inject.fired == 1
    (event,) = [e for e in events(run.dir) if e["event"] == "nonfinite_rollback"]
    assert event["what"] == "gradient norm"
    assert all(torch.isfinite(p).all() for p in run.model.parameters())


def test_huge_learning_rate_ends_in_one_clear_cli_line(data, tmp_path, capsys):
    from cnnlab.cli import main

    rc = main(["train", data, "--model", "seed_cnn", "--epochs", "2", "--batch-size", "16", "--optimizer", "sgd",
               "--lr", "1e8", "--schedule", "constant", "--precision", "fp32", "--no-tensorboard", "--quiet",
               "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and err.startswith("cnnlab: error: the ")
    assert "lower --lr" in err
    assert [e["event"] for e in events(tmp_path / "run")][-1] == "nonfinite_stop"


# ------------------------------------------------------------------------------------------------------------
# memory


class FakeCudaOOM(Callback):
    """The model raises torch.cuda.OutOfMemoryError for training batches larger than `limit`."""

    def __init__(self, limit: int, error: type[BaseException] | None = None, message: str = "") -> None:
        self.limit, self.error, self.message, self.raised = limit, error, message, 0

    def on_train_begin(self, logs):
        def pre_hook(module, inputs):
            if module.training and inputs[0].shape[0] > self.limit:
                self.raised += 1
                raise (self.error or torch.cuda.OutOfMemoryError)(self.message or "CUDA out of memory (simulated)")

        self.handle = self.trainer.model.register_forward_pre_hook(pre_hook)

    def on_train_end(self, logs):
        self.handle.remove()


def test_cuda_oom_splits_the_batch_and_keeps_training(data, tmp_path):
    oom = FakeCudaOOM(limit=4)
    run = train(data, tmp_path / "run", callbacks=[oom], epochs=1)
    assert run.trainer.micro_batches == 4 and oom.raised == 2  # 16 -> 2 x 8 -> 4 x 4, once
    splits = [e for e in events(run.dir) if e["event"] == "oom_split"]
    assert [e["parts"] for e in splits] == [2, 4] and all(e["batch"] == 16 for e in splits)
    assert run.history[0]["accuracy"] > 0.25


def test_split_batch_gives_the_full_batch_gradient():
    torch.manual_seed(0)
    model = cnnlab.create_model("mlp", 4, in_chans=1, input_size=(8, 8))
    trainer = Trainer(Predictor(model, classification_task(4), lambda x: x, torch.device("cpu")),
                      torch.optim.SGD(model.parameters(), lr=0.1))
    model.eval()  # no dropout: every split sees the same function
    x, y = torch.randn(12, 1, 8, 8), torch.randint(0, 4, (12,))
    grads, losses = [], []
    for parts in (1, 2, 3, 12):
        trainer.micro_batches = parts
        model.zero_grad(set_to_none=True)
        loss, logits = trainer.forward_backward(x, y)
        assert logits.shape == (12, 4)
        losses.append(float(loss))
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    for g, value in zip(grads[1:], losses[1:]):
        torch.testing.assert_close(g, grads[0], rtol=1e-5, atol=1e-6)
        assert value == pytest.approx(losses[0], rel=1e-6)


def test_oom_with_one_image_per_pass_stops_clearly(data, tmp_path):
    with pytest.raises(CnnlabError, match="out of GPU memory even with one image per forward pass"):
        train(data, tmp_path / "run", callbacks=[FakeCudaOOM(limit=0)], epochs=1)


def test_cpu_out_of_memory_is_a_clear_message(data, tmp_path):
    msg = "DefaultCPUAllocator: can't allocate memory: you tried to allocate 99999999999 bytes."
    with pytest.raises(CnnlabError, match=r"out of memory .* lower --batch-size") as info:
        train(data, tmp_path / "run", callbacks=[FakeCudaOOM(limit=0, error=RuntimeError, message=msg)], epochs=1)
    assert "memory_budget_mb" in str(info.value)
    with pytest.raises(CnnlabError, match="out of memory"):
        train(data, tmp_path / "run2", callbacks=[FakeCudaOOM(limit=0, error=MemoryError)], epochs=1)


def test_other_runtime_errors_are_not_mistaken_for_oom(data, tmp_path):
    with pytest.raises(RuntimeError, match="shape mismatch"):
        train(data, tmp_path / "run", callbacks=[FakeCudaOOM(limit=0, error=RuntimeError, message="shape mismatch")],
              epochs=1)


# ------------------------------------------------------------------------------------------------------------
# disk


class DiskFullAt(Callback):
    """From global step `at` on, every os.replace of the checkpoint module fails with ENOSPC."""

    def __init__(self, monkeypatch, at: int = 0) -> None:
        self.at = at
        if monkeypatch is None:  # disarmed: the same callback list for the resumed run
            return
        real = ckpt.os.replace

        def replace(src, dst):
            if self.trainer.global_step >= self.at:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(src, dst)

        monkeypatch.setattr(ckpt.os, "replace", replace)


def test_disk_full_keeps_the_last_checkpoint_and_the_run_resumes_exactly(data, tmp_path, monkeypatch):
    reference = train(data, tmp_path / "reference", checkpoint_every=4)
    run_dir = tmp_path / "run"
    with pytest.raises(CnnlabError) as info:
        train(data, run_dir, checkpoint_every=4, callbacks=[DiskFullAt(monkeypatch, at=12)])
    message = str(info.value)
    assert "\n" not in message and "No space left on device" in message
    assert "the last checkpoint (epoch 1, step 8)" in message or "the last checkpoint (end of epoch 1)" in message
    assert f"resume with: cnnlab train --resume {run_dir}" in message
    state = check_state(torch.load(run_dir / "last_state.pt", weights_only=True), "state")
    assert state["global_step"] == STEPS_PER_EPOCH  # the end of epoch 1; the write at step 12 failed
    assert not list(run_dir.glob(".*.tmp"))
    assert [e["event"] for e in events(run_dir)] == ["save_failed"]
    monkeypatch.undo()  # space freed
    resumed = cnnlab.resume(run_dir, callbacks=[DiskFullAt(None)])
    for (name, a), b in zip(reference.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert [{k: v for k, v in h.items() if k != "time"} for h in reference.history] == \
           [{k: v for k, v in h.items() if k != "time"} for h in resumed.history]


def test_a_crash_half_way_through_a_save_leaves_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "last_state.pt"
    ckpt.save_state({"format": 2, "a": torch.ones(3)}, path)

    def torn_save(obj, f):
        with open(f, "wb") as fh:
            fh.write(b"PK\x03\x04 half a file")
        raise KeyboardInterrupt  # Ctrl-C or a kill mid-write

    monkeypatch.setattr(ckpt.torch, "save", torn_save)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_state({"format": 2, "a": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.equal(ckpt.load_state(path)["a"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last_state.pt"]


def test_a_failing_write_elsewhere_in_the_run_folder_is_one_line(data, tmp_path, monkeypatch):
    from cnnlab.train.callbacks import CSVLogger

    def read_only(self, epoch, logs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(CSVLogger, "on_epoch_end", read_only)
    with pytest.raises(CnnlabError, match=r"cannot write to the run folder .*Read-only file system.*"
                                          r"no checkpoint was saved yet"):
        train(data, tmp_path / "run", epochs=1)
