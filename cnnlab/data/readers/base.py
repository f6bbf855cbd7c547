"""What every reader shares: the Split and DataSource it returns, the Container its refs point into, and the
reader registry that `load_source` (cnnlab.data.readers.load) dispatches through.

A reader is a module of this package that registers itself with `@register_reader(name, order=..., accepts=...)`;
`load_source` asks the registered readers in ascending `order` and the first whose `accepts` says yes reads DATA.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cnnlab.registry import Registry


@dataclass
class Split:
    """One split: labels plus either references into a container or an in-memory array."""

    labels: np.ndarray  # (N,) int64
    ids: list[str]  # what a user calls each sample (relative path, CSV id, or index)
    refs: list[str] | None = None  # paths / zip entry names, read through DataSource.container
    array: np.ndarray | None = None  # (N, H, W, C) uint8

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: np.ndarray) -> Split:
        return Split(
            labels=self.labels[index],
            ids=[self.ids[i] for i in index],
            refs=[self.refs[i] for i in index] if self.refs is not None else None,
            array=self.array[index] if self.array is not None else None,
        )


class Container:
    """Where a split's refs point: reads the bytes of one ref, and says what the refs' bytes depend on."""

    def read(self, ref: str) -> bytes:
        raise NotImplementedError

    def describe(self) -> str:
        """The location, for messages."""
        raise NotImplementedError

    def fingerprint(self, refs: list[str]) -> str:
        """Text that changes whenever the bytes behind `refs` may have changed (the decoded-image cache hashes it).

        It must be cheap (file metadata, never contents) and stable across processes and runs.
        """
        raise NotImplementedError


@dataclass
class DataSource:
    """What a reader returns: class names, splits, the container the refs point into, and skipped files."""

    name: str
    kind: str
    class_names: list[str]
    splits: dict[str, Split]
    container: Container | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    label_col: str | None = None  # for CSV sources: the column a submission file uses
    id_col: str | None = None
    val_held_out: bool = False  # the val split was held out of train by load_source, not read from the data

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def counts(self, split: str) -> list[int]:
        labels = self.splits[split].labels
        return np.bincount(labels, minlength=self.num_classes).tolist()


@dataclass(frozen=True)
class ReadRequest:
    """DATA as the user gave it, plus the options only some readers use (the CSV reader's columns and images)."""

    source: str  # as written, for messages and builtin names
    path: Path  # source with ~ expanded
    images: str | None = None
    id_col: str | None = None
    label_col: str | None = None
    skip_missing: bool = False

    def is_file_with(self, *suffixes: str) -> bool:
        """An existing path that is not a folder and ends in one of `suffixes` (compared lower-case)."""
        return self.path.exists() and not self.path.is_dir() and self.path.suffix.lower() in suffixes


@dataclass(frozen=True)
class Reader:
    """One registered reader: `accepts` decides from the request alone (cheap checks), `read` does the work."""

    name: str
    order: int
    accepts: Callable[[ReadRequest], bool]
    read: Callable[[ReadRequest], DataSource]


READERS = Registry("reader")


def register_reader(name: str, *, order: int, accepts: Callable[[ReadRequest], bool]) -> Callable:
    """Decorator: register `read(request) -> DataSource` as reader `name`, tried in ascending `order`.

    Orders are unique, so which reader wins for a path is never up to import order.
    """

    def decorator(read: Callable[[ReadRequest], DataSource]) -> Callable[[ReadRequest], DataSource]:
        taken = {r.name: r.order for r in readers_in_order()}
        clash = [n for n, o in taken.items() if o == order]
        if clash:
            raise ValueError(f"reader '{name}' has order {order}, already taken by '{clash[0]}'")
        doc = (read.__doc__ or "").strip().splitlines()
        READERS.register(name, doc=doc[0] if doc else name)(Reader(name, order, accepts, read))
        return read

    return decorator


def readers_in_order() -> list[Reader]:
    """The registered readers, in the order load_source asks them."""
    return sorted((READERS.get(n) for n in READERS.names()), key=lambda r: r.order)


def find_reader(request: ReadRequest) -> Reader | None:
    """The first registered reader that accepts the request, or None."""
    return next((r for r in readers_in_order() if r.accepts(request)), None)
