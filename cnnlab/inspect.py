"""`cnnlab inspect`: what is in a dataset before training on it: classes, counts, sizes, modes, bad files."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cnnlab.data.dataset import read_header
from cnnlab.data.readers import DataSource, load_source


@dataclass
class Inspection:
    source: DataSource
    counts: dict[str, dict[str, int]]
    sizes: Counter = field(default_factory=Counter)  # (w, h) -> count
    modes: Counter = field(default_factory=Counter)
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    imbalance_ratio: float = 1.0


def inspect_data(data: str, val_split: float = 0.2, max_files: int = 50_000, **opts: Any) -> Inspection:
    """Read every split's labels and (up to `max_files`) image headers."""
    src = load_source(data, val_split=val_split, **opts)
    counts = {s: dict(zip(src.class_names, src.counts(s))) for s in src.splits}
    result = Inspection(src, counts)
    for split in src.splits.values():
        if split.array is not None:
            n, h, w, c = split.array.shape
            result.sizes[(w, h)] += n
            result.modes[{1: "L", 3: "RGB"}.get(c, f"{c}ch")] += n
            continue
        for ident, ref in list(zip(split.ids, split.refs))[:max_files]:
            try:
                size, mode = read_header(src.container.read(ref))
            except Exception as e:  # noqa: BLE001  (reported, not fatal)
                result.unreadable.append((ident, type(e).__name__))
                continue
            result.sizes[size] += 1
            result.modes[mode] += 1
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
