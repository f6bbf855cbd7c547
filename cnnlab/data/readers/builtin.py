"""Builtin datasets by name: digits (scikit-learn, offline) and mnist, fashion_mnist, cifar10 (torchvision,
downloaded once into data_home(); without internet the error says what to pass instead).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cnnlab.data.readers.arrays import array_split
from cnnlab.data.readers.base import DataSource, ReadRequest, register_reader
from cnnlab.errors import CnnlabError

BUILTINS = ("digits", "mnist", "fashion_mnist", "cifar10")


def data_home() -> Path:
    return Path(os.environ.get("CNNLAB_DATA_HOME", Path.home() / ".cache" / "cnnlab" / "datasets"))


def read_builtin(name: str) -> DataSource:
    if name == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        x = np.clip(d.images * 16.0, 0, 255).astype(np.uint8)  # 0..16 -> 0..255, (1797, 8, 8)
        return DataSource("digits", "builtin", [str(i) for i in range(10)], {"train": array_split(x, d.target, name)})
    import torchvision.datasets as tvd

    cls = {"mnist": tvd.MNIST, "fashion_mnist": tvd.FashionMNIST, "cifar10": tvd.CIFAR10}[name]
    root = data_home()
    try:
        train, test = cls(str(root), train=True, download=True), cls(str(root), train=False, download=True)
    except (OSError, RuntimeError) as e:  # URLError is an OSError
        raise CnnlabError(
            f"could not download {name} into {root} ({type(e).__name__}); without internet, pass a local path "
            f"instead (e.g. a folder of MNIST IDX files or a .npz), or set CNNLAB_DATA_HOME to where it is"
        ) from None
    splits = {}
    for split, ds in (("train", train), ("test", test)):
        x = np.asarray(ds.data)
        y = np.asarray(ds.targets)
        splits[split] = array_split(x, y, name, f"{split}/")
    return DataSource(name, "builtin", list(train.classes), splits)


def _is_builtin_name(req: ReadRequest) -> bool:
    """A builtin name that is not also a path here (a local folder called `mnist` wins)."""
    return not req.path.exists() and req.source.lower() in BUILTINS


@register_reader("builtin", order=10, accepts=_is_builtin_name)
def _read_builtin_request(req: ReadRequest) -> DataSource:
    """digits, mnist, fashion_mnist or cifar10 by name."""
    return read_builtin(req.source.lower())
