"""The doctor's PNG plots (matplotlib, Agg): activations / gradients / updates over the layers, the learning-rate
range test of every seed, and the loss curves of the overfit and probe runs."""

from __future__ import annotations

from pathlib import Path

from cnnlab.doctor.probes import UPDATE_BAND
from cnnlab.plotting import pyplot, save


def layers_plot(acts: list[dict], grads: list[dict], path: Path, high: float = UPDATE_BAND[1]) -> Path:
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    fig.subplots_adjust(wspace=0.4)
    ax = axes[0]
    if acts:
        ax.semilogy(range(len(acts)), [max(a["std"], 1e-12) for a in acts], "o-", label="std (log, left)")
        frac = ax.twinx()
        frac.plot(range(len(acts)), [a["dead"] for a in acts], "s--", color="#ff7f0e", label="dead (right)")
        frac.plot(range(len(acts)), [a["saturated"] for a in acts], "^--", color="#d62728", label="saturated (right)")
        frac.set_ylim(-0.02, 1.02)
        ax.set_xticks(range(len(acts)), [a["layer"] for a in acts], rotation=70, fontsize=7)
        ax.legend(fontsize=8, loc="lower left")
        frac.legend(fontsize=8, loc="lower right")
    ax.set_title("activations (one forward pass)")
    names = [g["layer"].removesuffix(".weight") for g in grads]
    axes[1].semilogy(range(len(grads)), [max(g["grad_norm"], 1e-20) for g in grads], "o-")
    axes[1].set_title("gradient norm per layer")
    axes[2].semilogy(range(len(grads)), [max(g["update_ratio"], 1e-20) if g["update_ratio"] == g["update_ratio"]
                                         else 1e-20 for g in grads], "o-")
    axes[2].axhspan(*UPDATE_BAND, color="#2ca02c", alpha=0.15, label="1e-4..1e-2 (the notes' band)")
    if high > UPDATE_BAND[1]:
        axes[2].axhspan(UPDATE_BAND[1], high, color="#2ca02c", alpha=0.06, label=f"..{high:.0e} (Adam-like)")
    axes[2].axhline(1e-3, color="#2ca02c", lw=1)
    axes[2].set_title("update / weight ratio after one step")
    axes[2].legend(fontsize=8)
    for ax in axes[1:]:
        ax.set_xticks(range(len(grads)), names, rotation=70, fontsize=7)
    return save(fig, path)


def lr_plot(found: dict, lr: float, path: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for k, s in enumerate(found["sweeps"]):
        ax.semilogx(s["lr"], s["loss"], label=f"seed {k}: {s['suggested']:.1e}")
    ax.axvspan(found["low"], found["high"], color="#2ca02c", alpha=0.2)
    ax.axvline(found["suggested"], color="black", label=f"suggested {found['suggested']:.1e}")
    ax.axvline(lr, color="#d62728", ls="--", label=f"set lr {lr:.1e}")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("smoothed loss")
    ax.set_title("learning-rate range test")
    ax.legend(fontsize=8)
    return save(fig, path)


def training_plot(overfit: list[float], probe: list[float], chance: float, path: Path) -> Path:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for ax, losses, title in ((axes[0], overfit, "overfit two batches"), (axes[1], probe, "training probe")):
        ax.plot(losses)
        ax.axhline(chance, color="#d62728", ls="--", label=f"chance {chance:.2f}")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_title(title)
        ax.legend(fontsize=8)
    return save(fig, path)
