"""How much work the doctor's training checks get, and how a user sees them run.

The whole doctor should take at most a minute on a 2-core CPU for up to 1,000 images and the default model (20 s with
`--quick`). The training checks (overfit a tiny subset, the lr range test, the training probe) are most of it, and
their cost is steps x images x the time of one image's training step, which the gradient check measures. `fit_plan`
takes the longest plan that fits the time left: the sweeps and the probe get shorter first, then their batches
smaller, then (for large images) the checks run on downscaled images; a shortened check says so in its row. When
even the shortest plan cannot fit, the doctor says how long it will take before it starts.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

BUDGET_S = 60.0  # the whole doctor, default settings
QUICK_BUDGET_S = 20.0  # --quick
FIXED_S = 7.0  # outside the doctor's clock on this CPU: importing torch and cnnlab (4.5 s), drawing the plots (2.5 s)
EARLY_PIXELS = 128 * 64 * 64  # images x pixels of the one-batch checks (initial loss, init, gradients): 128 at 64 px


@dataclass(frozen=True)
class Plan:
    """The training checks' work: the tiny subset (images, batch, steps), the lr sweeps, the probe, the images its
    accuracy is measured on (val: half), and the side the images are scaled to (1.0: as trained)."""

    overfit_images: int
    overfit_batch: int
    overfit_steps: int
    sweeps: int
    sweep_steps: int
    batch: int
    probe_steps: int
    eval_images: int
    scale: float = 1.0
    shortened: bool = False

    def image_steps(self) -> float:
        """The plan's cost in image training steps at full size (a forward-only image counts a third)."""
        overfit = self.overfit_steps * self.overfit_batch + self.overfit_steps / 10 * self.overfit_images / 3
        probe = self.probe_steps * self.batch + self.eval_images * 1.5 / 3
        return (overfit + self.sweeps * self.sweep_steps * self.batch + probe) * self.scale ** 2

    def describe(self) -> str:
        size = f" on images scaled to {self.scale:.0%} of their side" if self.scale < 1 else ""
        return (f"overfit {self.overfit_images} images (up to {self.overfit_steps} steps), lr range test "
                f"{self.sweeps} x {self.sweep_steps} steps, probe {self.probe_steps} steps, batches of "
                f"{self.batch}{size}")


FULL = Plan(64, 32, 150, 3, 100, 64, 150, 2000)
QUICK = Plan(64, 32, 150, 2, 60, 64, 80, 1000)
SHORTER = (  # tried in order after the default: shorter sweeps and probe, then smaller batches, then smaller images
    dict(sweeps=2, sweep_steps=80, probe_steps=120, eval_images=1000),
    dict(overfit_images=32, overfit_batch=16, overfit_steps=120, sweeps=2, sweep_steps=60, batch=32,
         probe_steps=100, eval_images=512),
    dict(overfit_images=16, overfit_batch=8, overfit_steps=100, sweeps=1, sweep_steps=50, batch=16, probe_steps=60,
         eval_images=256),
    dict(overfit_images=16, overfit_batch=8, overfit_steps=60, sweeps=1, sweep_steps=40, batch=16, probe_steps=40,
         eval_images=256),
)
SCALES = (0.5, 0.25)  # downscaled images for the shortest plan, when the images are at least 64 / 128 px


def fit_plan(seconds_per_image: float, seconds_left: float, quick: bool, side: int) -> tuple[Plan, float]:
    """The longest plan whose estimated time fits `seconds_left`, else the cheapest one; and its estimate (s)."""
    default = QUICK if quick else FULL
    plans = [default] + [replace(default, **{k: min(v, getattr(default, k)) for k, v in s.items()}, shortened=True)
                         for s in SHORTER]
    plans += [replace(p, scale=s) for s in SCALES if side * s >= 32 for p in plans[-2:]]  # on smaller images
    for plan in plans:
        estimate = plan.image_steps() * seconds_per_image
        if estimate <= seconds_left:
            return plan, estimate
    return plans[-1], plans[-1].image_steps() * seconds_per_image


@contextlib.contextmanager
def progress(console: Any, title: str, total: int) -> Iterator[Callable[[], None]]:
    """A transient progress bar with an ETA on a terminal (a `tick` per step); in a log, nothing until the row."""
    if not getattr(console, "is_terminal", False):
        yield lambda: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn(title), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=True,
                   console=console)
    with bar:
        task = bar.add_task(title, total=total)
        yield lambda: bar.advance(task)
