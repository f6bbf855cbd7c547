"""matplotlib without a screen: the pyplot module on the Agg backend, imported on first use, and saving a figure.

Every figure cnnlab draws (doctor, report, tune, augment-preview) goes through here."""

from __future__ import annotations

from pathlib import Path

DPI = 100


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: Path, dpi: int = DPI, tight: bool = True) -> Path:
    """Write the figure as a PNG and close it (figures left open keep their memory)."""
    fig.savefig(path, dpi=dpi, bbox_inches="tight" if tight else None)
    pyplot().close(fig)
    return path
