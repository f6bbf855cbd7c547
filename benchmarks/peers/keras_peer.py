"""Peer: the same models in Keras 3 on the TensorFlow backend, trained the way the Keras docs teach.

``model.fit(..., verbose=0)`` with default Keras init (Glorot-uniform, zero bias), Adam 1e-3, the same batch
size and the same normalised in-memory arrays as the PyTorch peer. Epoch times come from a callback (fit's
setup and the per-epoch test evaluation are outside them). Importing this module never imports TensorFlow;
call :func:`available` first, and the harness records "not installed" when it returns a reason.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from benchmarks.common import Dataset, random_crop_flip


def available() -> str | None:
    """None when Keras 3 with TensorFlow can be imported, else the reason it cannot."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    try:
        import keras
        import tensorflow  # noqa: F401
    except ImportError as e:
        return f"not installed ({e.name}); pip install -e .[bench]"
    if not keras.__version__.startswith("3"):
        return f"keras {keras.__version__} is not Keras 3"
    return None


def _keras() -> Any:
    available()
    import keras

    return keras


def seed_cnn(shape: tuple[int, int, int], num_classes: int = 10) -> Any:
    """The seed CNN, layer for layer as in the course notes (474,618 params on 28x28x1)."""
    layers = _keras().layers
    conv = [layers.Conv2D(w, 3, padding="same", activation="relu") for w in (16, 16, 32, 32, 64, 64)]
    return _keras().Sequential(
        [
            layers.Input(shape),
            conv[0],
            conv[1],
            layers.MaxPooling2D(2),
            conv[2],
            conv[3],
            layers.MaxPooling2D(2),
            conv[4],
            conv[5],
            layers.Flatten(),
            layers.Dense(128, activation="relu"),
            layers.Dense(num_classes),
        ]
    )


def _basic_block(x: Any, width: int, stride: int) -> Any:
    layers = _keras().layers
    out = layers.Conv2D(width, 3, stride, padding="same", use_bias=False)(x)
    out = layers.ReLU()(layers.BatchNormalization()(out))
    out = layers.BatchNormalization()(layers.Conv2D(width, 3, padding="same", use_bias=False)(out))
    short = x
    c_in = x.shape[-1]
    if stride != 1 or c_in != width:  # option A: subsample + zero-pad channels, no parameters
        pad = width - c_in
        short = layers.Lambda(
            lambda t: _keras().ops.pad(
                t[:, ::stride, ::stride, :], [[0, 0], [0, 0], [0, 0], [pad // 2, pad - pad // 2]]
            )
        )(x)
    return layers.ReLU()(layers.Add()([out, short]))


def resnet20(shape: tuple[int, int, int], num_classes: int = 10) -> Any:
    """CIFAR ResNet-20 with option-A shortcuts, functional API."""
    keras = _keras()
    layers = keras.layers
    inp = layers.Input(shape)
    x = layers.ReLU()(layers.BatchNormalization()(layers.Conv2D(16, 3, padding="same", use_bias=False)(inp)))
    for stage, width in enumerate((16, 32, 64)):
        for i in range(3):
            x = _basic_block(x, width, 2 if stage > 0 and i == 0 else 1)
    out = layers.Dense(num_classes)(layers.GlobalAveragePooling2D()(x))
    return keras.Model(inp, out)


def build_model(name: str, dataset: Dataset, lr: float = 1e-3, precision: str = "fp32") -> Any:
    """Compile ``seed_cnn`` or ``resnet20`` with Adam(lr) and sparse categorical cross-entropy on logits."""
    keras = _keras()
    keras.mixed_precision.set_global_policy("mixed_bfloat16" if precision == "bf16" else "float32")
    builders = {"seed_cnn": seed_cnn, "resnet20": resnet20}
    model = builders[name](dataset.train.x.shape[1:], dataset.num_classes)
    model.compile(
        optimizer=keras.optimizers.Adam(lr),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def _epoch_timer() -> Any:
    keras = _keras()

    class EpochTimer(keras.callbacks.Callback):
        """Wall time of each epoch's training, from on_epoch_begin to on_epoch_end."""

        def __init__(self) -> None:
            super().__init__()
            self.times: list[float] = []
            self.cpu_times: list[float] = []
            self._t0 = self._c0 = 0.0

        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self._t0, self._c0 = time.perf_counter(), time.process_time()

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            self.times.append(time.perf_counter() - self._t0)
            self.cpu_times.append(time.process_time() - self._c0)

    return EpochTimer()


def _test_accuracy(model: Any, dataset: Dataset) -> float:
    logits = model.predict(dataset.test.x, batch_size=1000, verbose=0)
    return float(np.mean(np.argmax(logits, axis=1) == dataset.test.y))


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
    """One ``fit`` call per epoch (so test accuracy can be checked between them); stops at ``target``."""
    keras = _keras()
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    model = build_model(model_name, dataset, lr, precision)
    hist: dict[str, list[float]] = {"epoch_times": [], "images_per_s": [], "train_loss": [], "test_acc": []}
    for _ in range(epochs):
        timer = _epoch_timer()
        t_aug = time.perf_counter()
        x = random_crop_flip(dataset.train.x, rng) if augment else dataset.train.x
        t_aug = time.perf_counter() - t_aug if augment else 0.0
        h = model.fit(
            x, dataset.train.y, batch_size=batch_size, epochs=1, shuffle=True, verbose=0, callbacks=[timer]
        )
        dt = timer.times[0] + t_aug
        hist["epoch_times"].append(dt)
        hist["images_per_s"].append(len(dataset.train) / dt)
        hist["train_loss"].append(float(h.history["loss"][-1]))
        hist["test_acc"].append(_test_accuracy(model, dataset))
        if target is not None and hist["test_acc"][-1] >= target:
            break
    return hist


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
    """Images/s over ``repeats`` timed epochs of ``steps`` batches, after one warm-up epoch of
    ``warmup_steps`` batches (which pays for tracing)."""
    keras = _keras()
    keras.utils.set_random_seed(seed)
    model = build_model(model_name, dataset, 1e-3, precision)
    x, y = dataset.train.x, dataset.train.y
    model.fit(
        x[: warmup_steps * batch_size],
        y[: warmup_steps * batch_size],
        batch_size=batch_size,
        epochs=1,
        verbose=0,
    )
    n = min(steps * batch_size, len(y))
    timer = _epoch_timer()
    model.fit(x[:n], y[:n], batch_size=batch_size, epochs=repeats, shuffle=True, verbose=0, callbacks=[timer])
    return {
        "images_per_s_repeats": [n / t for t in timer.times],
        "images_per_cpu_s_repeats": [n / t for t in timer.cpu_times],
    }
