"""Peer: fastai's ``Learner`` on the same in-memory tensors, models and optimizer as the PyTorch peer.

Data goes through fastai's own ``DataLoaders.from_dsets`` (per-item fetch + collate, as fastai does it);
``learn.fit(epochs, 1e-3)`` with a plain constant learning rate and fastai's Adam set to PyTorch's defaults
(betas 0.9/0.999, eps 1e-8, no weight decay) so only the framework differs. Epoch training time is measured
from ``before_epoch`` to ``after_train`` (validation excluded); the validation set is the test split.
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any

from benchmarks.common import Dataset, Split, random_crop_flip


def available() -> str | None:
    """None when fastai can be imported, else the reason it cannot."""
    try:
        import fastai.vision.all  # noqa: F401
    except ImportError as e:
        return f"not installed ({e.name}); pip install fastai"
    return None


def _dls(dataset: Dataset, batch_size: int, train_split: Split | None = None) -> Any:
    import torch
    from fastai.data.core import DataLoaders

    def ds(s: Split) -> Any:
        x = torch.from_numpy(s.x).permute(0, 3, 1, 2).contiguous()
        return torch.utils.data.TensorDataset(x, torch.from_numpy(s.y))

    # num_workers=0: fastai's default worker processes fight the 2 compute threads for the 2 cores.
    return DataLoaders.from_dsets(
        ds(train_split or dataset.train), ds(dataset.test), bs=batch_size, device="cpu", num_workers=0
    )


def _learner(
    dataset: Dataset, model_name: str, batch_size: int, lr: float, precision: str, cbs: list[Any]
) -> Any:
    import torch
    from fastai.vision.all import Adam, CrossEntropyLossFlat, Learner, accuracy

    from benchmarks.peers.torch_loop import build_model

    model = build_model(model_name, dataset).to(memory_format=torch.contiguous_format)
    opt = partial(Adam, mom=0.9, sqr_mom=0.999, eps=1e-8, wd=0.0)
    learn = Learner(
        _dls(dataset, batch_size),
        model,
        loss_func=CrossEntropyLossFlat(),
        opt_func=opt,
        metrics=accuracy,
        lr=lr,
        cbs=cbs,
    )
    if precision == "bf16":
        raise NotImplementedError("fastai peer: bf16 not wired (fastai's MixedPrecision targets CUDA fp16)")
    return learn


def _callbacks(target: float | None) -> tuple[Any, Any]:
    from fastai.callback.core import Callback, CancelFitException

    class TrainTimer(Callback):
        """Training-only wall time per epoch; cancels the fit once validation accuracy reaches target."""

        order = 100

        def __init__(self) -> None:
            self.times: list[float] = []
            self.accs: list[float] = []

        def before_epoch(self) -> None:
            self.t0 = time.perf_counter()

        def after_train(self) -> None:
            self.times.append(time.perf_counter() - self.t0)

        def after_epoch(self) -> None:
            self.accs.append(float(self.recorder.values[-1][2]))
            if target is not None and self.accs[-1] >= target:
                raise CancelFitException()

    timer = TrainTimer()
    return timer, [timer]


def train(
    dataset: Dataset,
    model_name: str = "seed_cnn",
    epochs: int = 5,
    batch_size: int = 128,
    lr: float = 1e-3,
    precision: str = "fp32",
    seed: int = 0,
    target: float | None = None,
    augment: bool = False,
) -> dict[str, Any]:
    """``learn.fit`` up to ``epochs``; returns per-epoch training times and test accuracies."""
    from fastai.torch_core import set_seed

    if augment:  # re-augment per epoch like the other peers by fitting one epoch at a time
        return _train_augmented(dataset, model_name, epochs, batch_size, lr, precision, seed, target)
    set_seed(seed)
    timer, cbs = _callbacks(target)
    learn = _learner(dataset, model_name, batch_size, lr, precision, cbs)
    with learn.no_bar(), learn.no_logging():
        learn.fit(epochs, lr)
    return _history(timer, len(dataset.train), learn)


def _train_augmented(
    dataset: Dataset,
    model_name: str,
    epochs: int,
    batch_size: int,
    lr: float,
    precision: str,
    seed: int,
    target: float | None,
) -> dict[str, Any]:
    import numpy as np
    from fastai.torch_core import set_seed

    set_seed(seed)
    rng = np.random.default_rng(seed)
    timer, cbs = _callbacks(target)
    learn = _learner(dataset, model_name, batch_size, lr, precision, cbs)
    for _ in range(epochs):
        t0 = time.perf_counter()
        aug = Split(random_crop_flip(dataset.train.x, rng), dataset.train.y)
        learn.dls = _dls(dataset, batch_size, aug)
        t_aug = time.perf_counter() - t0
        with learn.no_bar(), learn.no_logging():
            learn.fit(1, lr)
        timer.times[-1] += t_aug
        if target is not None and timer.accs[-1] >= target:
            break
    return _history(timer, len(dataset.train), learn)


def _history(timer: Any, n_train: int, learn: Any) -> dict[str, Any]:
    return {
        "epoch_times": timer.times,
        "images_per_s": [n_train / t for t in timer.times],
        "train_loss": [float(v[0]) for v in learn.recorder.values],
        "test_acc": timer.accs,
    }


def throughput(
    dataset: Dataset,
    model_name: str = "seed_cnn",
    batch_size: int = 128,
    precision: str = "fp32",
    warmup_steps: int = 20,
    steps: int = 100,
    repeats: int = 3,
    seed: int = 0,
) -> dict[str, Any]:
    """Images/s over ``repeats`` one-epoch fits on ``steps`` batches, after a ``warmup_steps`` fit."""
    from fastai.torch_core import set_seed

    set_seed(seed)
    timer, cbs = _callbacks(None)
    n = min(steps * batch_size, len(dataset.train))
    sub = Dataset(
        dataset.name,
        Split(dataset.train.x[:n], dataset.train.y[:n]),
        Split(dataset.test.x[:batch_size], dataset.test.y[:batch_size]),
    )
    learn = _learner(sub, model_name, batch_size, 1e-3, precision, cbs)
    warm = Split(dataset.train.x[: warmup_steps * batch_size], dataset.train.y[: warmup_steps * batch_size])
    learn.dls = _dls(sub, batch_size, warm)
    with learn.no_bar(), learn.no_logging():
        learn.fit(1, 1e-3)
        learn.dls = _dls(sub, batch_size)
        learn.fit(repeats, 1e-3)
    return {"images_per_s_repeats": [n / t for t in timer.times[1:]]}
