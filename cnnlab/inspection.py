"""`cnnlab inspect`: what is in a dataset before training on it: classes, counts, sizes, modes, bad files."""

from __future__ import annotations

import hashlib
import io
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from cnnlab.data.dataset import unreadable_reason
from cnnlab.data.readers import DataSource, load_source


@dataclass
class Inspection:
    source: DataSource
    counts: dict[str, dict[str, int]]
    sizes: Counter = field(default_factory=Counter)  # (w, h) -> count
    modes: Counter = field(default_factory=Counter)
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    imbalance_ratio: float = 1.0
    duplicates: list[list[tuple[str, str]]] = field(default_factory=list)  # groups of (split, id), same bytes

    @property
    def leaks(self) -> list[list[tuple[str, str]]]:
        """Duplicate groups that span more than one split (train/val/test leakage)."""
        return [g for g in self.duplicates if len({split for split, _ in g}) > 1]


def check_image(data: bytes) -> tuple[tuple[int, int], str]:
    """(width, height) and mode of an image file, after decoding all of it (truncated files raise)."""
    with Image.open(io.BytesIO(data)) as im:
        limit = Image.MAX_IMAGE_PIXELS
        if limit and im.width * im.height > limit:
            raise Image.DecompressionBombError(f"{im.width}x{im.height} pixels, over the limit of {limit:,}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            im.load()
        return im.size, im.mode


def inspect_data(data: str, val_split: float = 0.2, max_files: int = 50_000, **opts: Any) -> Inspection:
    """Read every split's labels and decode (up to `max_files`) images; hash their bytes for duplicates."""
    src = load_source(data, val_split=val_split, **opts)
    counts = {s: dict(zip(src.class_names, src.counts(s))) for s in src.splits}
    result = Inspection(src, counts)
    hashes: dict[str, list[tuple[str, str]]] = {}
    for split_name, split in src.splits.items():
        if split.array is not None:
            for i, ident in enumerate(split.ids):
                hashes.setdefault(hashlib.blake2b(split.array[i].tobytes(), digest_size=16).hexdigest(),
                                  []).append((split_name, ident))
            n, h, w, c = split.array.shape
            result.sizes[(w, h)] += n
            result.modes[{1: "L", 3: "RGB"}.get(c, f"{c}ch")] += n
            continue
        for ident, ref in list(zip(split.ids, split.refs))[:max_files]:
            try:
                data = src.container.read(ref)
                hashes.setdefault(hashlib.blake2b(data, digest_size=16).hexdigest(), []).append((split_name, ident))
                size, mode = check_image(data)
            except Exception as e:  # noqa: BLE001  (reported, not fatal)
                result.unreadable.append((ident, unreadable_reason(e)))
                continue
            result.sizes[size] += 1
            result.modes[mode] += 1
    result.duplicates = [group for group in hashes.values() if len(group) > 1]
    train = np.array(src.counts("train"))
    result.imbalance_ratio = float(train.max() / max(train.min(), 1))
    return result


def print_inspection(ins: Inspection) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    src = ins.source
    console.print(f"[bold]{src.name}[/bold] ({src.kind}): {src.num_classes} classes", soft_wrap=True)
    table = Table()
    table.add_column("class")
    for split in ins.counts:
        table.add_column(split, justify="right")
    for name in src.class_names:
        table.add_row(name, *(str(ins.counts[s][name]) for s in ins.counts))
    table.add_row("[bold]total", *(f"[bold]{sum(ins.counts[s].values())}" for s in ins.counts))
    console.print(table)
    if ins.sizes:
        ws = np.array([w for (w, h), n in ins.sizes.items() for _ in range(min(n, 10_000))])
        hs = np.array([h for (w, h), n in ins.sizes.items() for _ in range(min(n, 10_000))])
        common = ", ".join(f"{w}x{h} ({n})" for (w, h), n in ins.sizes.most_common(3))
        console.print(f"image sizes (WxH): {len(ins.sizes)} distinct, most common {common}; width {ws.min()}-"
                      f"{ws.max()} (median {int(np.median(ws))}), height {hs.min()}-{hs.max()} "
                      f"(median {int(np.median(hs))})", soft_wrap=True)
    console.print("modes: " + ", ".join(f"{m} {n}" for m, n in ins.modes.most_common()), soft_wrap=True)
    ratio = ins.imbalance_ratio
    note = "  [yellow]imbalanced: consider class weights or resampling[/yellow]" if ratio >= 3 else ""
    console.print(f"imbalance ratio (largest / smallest train class): {ratio:.2f}{note}", soft_wrap=True)
    bad = list(src.skipped) + ins.unreadable
    if bad:
        console.print(f"[yellow]{len(bad)} files will be skipped:[/yellow]")
        for name, reason in bad[:20]:
            console.print(f"  {name}: {reason}", markup=False, soft_wrap=True)
        if len(bad) > 20:
            console.print(f"  ... {len(bad) - 20} more")
    _print_duplicates(console, ins)


def _print_duplicates(console, ins: Inspection) -> None:
    if not ins.duplicates:
        console.print("exact duplicates: none")
        return
    extra = sum(len(g) - 1 for g in ins.duplicates)
    console.print(f"[yellow]exact duplicates: {len(ins.duplicates)} groups ({extra} redundant files)[/yellow]")
    for group in ins.duplicates[:10]:
        console.print("  " + " = ".join(f"{s}:{i}" for s, i in group), markup=False, soft_wrap=True)
    leaks = ins.leaks
    if leaks:
        console.print(f"[red]leakage: {len(leaks)} duplicate groups span train/val/test; the held-out metrics "
                      "overstate accuracy. Remove them from one side.[/red]")
