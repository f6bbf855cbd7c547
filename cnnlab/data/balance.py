"""Imbalanced and small datasets: measure the imbalance, and the treatments `--balance` applies.

Owns: class counts and the imbalance ratio; class weights (inverse frequency, effective number of samples);
SMOTE / Borderline-SMOTE / ADASYN (imbalanced-learn) on features or on flattened pixels; binary decision-threshold
selection; and `plan_balance`, which checks a combination of treatments, refuses silent double corrections and
says what was applied (and decides the loss, class weights and monitor without writing the config). The samplers
of oversample / undersample live in cnnlab.data.samplers.

Treatments (`balance.methods`, combinable where it makes sense):
    oversample        weighted sampler with replacement: every class equally likely in each epoch
    undersample       each epoch: every class cut to the smallest class's count; rotates so all data is used
    class_weights     per-class loss weights (balance.class_weights: inverse | effective)
    focal             focal loss (balance.focal_gamma; balance.focal_alpha for binary tasks)
    smote, borderline_smote, adasyn
                      synthetic minority samples on the flattened uint8 pixels of the train split (small images)
    threshold         binary tasks: the decision threshold maximizing val balanced accuracy
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from cnnlab.config.schema import BALANCE_METHODS
from cnnlab.config.schema import parse_methods as normalize_methods
from cnnlab.errors import CnnlabError

# A train split whose largest / smallest class ratio reaches IMBALANCED_RATIO counts as imbalanced: the headline
# metrics become balanced accuracy and macro F1 and `monitor: auto` follows. At WARN_RATIO the run log warns.
IMBALANCED_RATIO = 1.5
WARN_RATIO = 3.0

METHODS = BALANCE_METHODS  # name -> what it does (cnnlab/config/schema.py)
SAMPLERS = ("oversample", "undersample")
SYNTHETIC = ("smote", "borderline_smote", "adasyn")
MAX_PIXEL_FEATURES = 64 * 64 * 3  # SMOTE on pixels only for small images: interpolating large images is noise


# ------------------------------------------------------------------------------------------------------------
# measure


def class_counts(labels: torch.Tensor | np.ndarray, num_classes: int) -> np.ndarray:
    """Samples per class, (num_classes,) int64."""
    y = labels.cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    return np.bincount(y.astype(np.int64), minlength=num_classes)


def imbalance_ratio(counts: np.ndarray) -> float:
    """Largest / smallest class count (a class with no samples counts as 1)."""
    counts = np.asarray(counts)
    return float(counts.max() / max(int(counts.min()), 1))


# ------------------------------------------------------------------------------------------------------------
# class weights


def compute_class_weights(counts: np.ndarray, scheme: str = "inverse", beta: float = 0.999) -> torch.Tensor:
    """Per-class loss weights, scaled to average 1 over the classes present.

    inverse:   w_c proportional to 1 / n_c (scikit-learn's "balanced": N / (K n_c)).
    effective: w_c proportional to (1 - beta) / (1 - beta ** n_c), the inverse "effective number of samples"
               (Cui et al. 2019); beta -> 1 approaches inverse, beta = 0 gives equal weights.
    A class absent from training gets weight 1 (it never occurs in a training batch).
    """
    counts = np.asarray(counts, dtype=np.float64)
    present = counts > 0
    if not present.any():
        raise CnnlabError("cannot compute class weights: the train split is empty")
    if scheme == "inverse":
        raw = np.where(present, 1.0 / np.maximum(counts, 1), 0.0)
    elif scheme == "effective":
        if not 0 <= beta < 1:
            raise CnnlabError(f"balance.beta must be in [0, 1), got {beta}")
        raw = np.where(present, (1 - beta) / (1 - np.power(beta, np.maximum(counts, 1))), 0.0)
    else:
        raise CnnlabError(f"unknown balance.class_weights '{scheme}': use inverse or effective")
    weights = np.ones_like(counts)
    weights[present] = raw[present] * present.sum() / raw[present].sum()
    return torch.tensor(weights, dtype=torch.float32)


# ------------------------------------------------------------------------------------------------------------
# SMOTE and friends (imbalanced-learn)


def _resampler(method: str, k: int, seed: int, counts: np.ndarray):
    from imblearn.over_sampling import ADASYN, SMOTE, BorderlineSMOTE, RandomOverSampler

    present = counts[counts > 0]
    smallest = int(present.min())
    if method in SYNTHETIC and smallest < 2:
        raise CnnlabError(f"{method} needs at least 2 samples in every class (the smallest has {smallest}); "
                          "use --balance oversample instead")
    k = max(1, min(k, smallest - 1))  # imbalanced-learn needs k < the smallest class's count
    makers: dict[str, Callable[[], Any]] = {
        "smote": lambda: SMOTE(k_neighbors=k, random_state=seed),
        "borderline_smote": lambda: BorderlineSMOTE(k_neighbors=k, m_neighbors=max(k, 2) * 2, random_state=seed),
        "adasyn": lambda: ADASYN(n_neighbors=k, random_state=seed),
        "random_over": lambda: RandomOverSampler(random_state=seed),
    }
    if method not in makers:
        raise CnnlabError(f"unknown resampling method '{method}': use {', '.join(makers)}")
    return makers[method]()


def resample_features(features: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor, method: str = "smote",
                      k: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Balance (N, D) features with synthetic minority samples; returns (features, labels), originals first.

    For cached bottleneck features (training a head) or flattened pixels. Borderline-SMOTE and ADASYN only
    synthesize near the class borders, so their classes may stay somewhat below the majority's count.
    """
    x = features.cpu().numpy() if isinstance(features, torch.Tensor) else np.asarray(features)
    y = labels.cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    x = x.reshape(len(x), -1)
    counts = np.bincount(y.astype(np.int64))
    sampler = _resampler(method, k, seed, counts)
    try:
        x_res, y_res = sampler.fit_resample(x, y)
    except (ValueError, RuntimeError) as e:  # e.g. ADASYN: "no samples will be generated"
        raise CnnlabError(f"{method} could not resample this data ({e}); try --balance smote or oversample") from None
    return np.asarray(x_res), np.asarray(y_res)


def resample_pixels(x: torch.Tensor, y: torch.Tensor, method: str = "smote", k: int = 5,
                    seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """SMOTE-style resampling of uint8 images (N, C, H, W) on their flattened pixels.

    New images are interpolations between a minority image and a same-class neighbour, rounded and clipped
    back to uint8. Sensible for small, roughly aligned images (MNIST 28x28, 32x32 tiles); larger images are
    refused (resample their features instead).
    """
    n, c, h, w = x.shape
    if c * h * w > MAX_PIXEL_FEATURES:
        raise CnnlabError(f"{method} on pixels is for small images (at most {MAX_PIXEL_FEATURES} values); these "
                          f"are {c}x{h}x{w}: use --balance oversample or class_weights, or SMOTE on features")
    flat = x.reshape(n, -1).cpu().numpy().astype(np.float32)
    x_res, y_res = resample_features(flat, y.cpu().numpy(), method, k, seed)
    images = np.clip(np.rint(x_res), 0, 255).astype(np.uint8).reshape(-1, c, h, w)
    return torch.from_numpy(images), torch.from_numpy(y_res.astype(np.int64))


# ------------------------------------------------------------------------------------------------------------
# binary decision threshold


def select_threshold(y_true: np.ndarray, p_positive: np.ndarray) -> tuple[float, float]:
    """The threshold on P(class 1) maximizing balanced accuracy (equivalently Youden's J) and that accuracy.

    Predict class 1 when p >= threshold. The threshold is the midpoint between the best cut's score and the next
    lower score, so it sits in the gap rather than on a sample.
    """
    from sklearn.metrics import roc_curve

    y = np.asarray(y_true).astype(np.int64)
    p = np.asarray(p_positive, dtype=np.float64)
    if len(np.unique(y)) < 2:
        raise CnnlabError("threshold moving needs both classes in the validation split")
    fpr, tpr, thr = roc_curve(y, p, drop_intermediate=False)  # thr descending; thr[0] = inf (nothing positive)
    score = (tpr + 1 - fpr) / 2
    best = int(np.argmax(score[1:])) + 1
    lower = thr[best + 1] if best + 1 < len(thr) else max(thr[best] - 1e-6, 0.0)
    return float((thr[best] + lower) / 2), float(score[best])


# ------------------------------------------------------------------------------------------------------------
# the plan: which treatments a run applies, checked once before training


@dataclass
class BalancePlan:
    """What `--balance` resolved to for one run, and the lines the run log states."""

    counts: list[int]
    ratio: float
    imbalanced: bool
    methods: list[str]
    sampler: str | None = None
    synthetic: str | None = None
    threshold: bool = False
    notes: list[str] = field(default_factory=list)
    loss: str = "cross_entropy"  # the loss the run uses (focal when asked)
    weights: list[float] | None = None  # the loss's per-class weights
    monitor: str = "auto"  # callbacks.monitor as the plan resolved it (auto stays auto for balanced data)

    def record(self) -> dict[str, Any]:
        return {"train_counts": self.counts, "imbalance_ratio": round(self.ratio, 4), "imbalanced": self.imbalanced,
                "applied": self.methods, "notes": self.notes}


def parse_methods(methods: list[str] | str) -> list[str]:
    """Normalise `oversample,class_weights` / a list to known method names, in order, without repeats."""
    out = normalize_methods(methods)
    for item in out:
        if item not in METHODS:
            raise CnnlabError(f"unknown --balance method '{item}': choose from {', '.join(METHODS)} "
                              "(comma-separated)")
    return out


def _check_combination(methods: list[str], weighted: bool, allow_double: bool, binary: bool,
                       has_val: bool) -> list[str]:
    """Refuse contradictions and (unless allow_double) double corrections; returns the rebalancing treatments."""
    samplers = [m for m in methods if m in SAMPLERS]
    synthetic = [m for m in methods if m in SYNTHETIC]
    if len(samplers) > 1:
        raise CnnlabError("--balance oversample and undersample contradict each other; choose one")
    if len(synthetic) > 1:
        raise CnnlabError(f"--balance {' and '.join(synthetic)}: choose one synthetic resampler")
    rebalancers = samplers + synthetic + (["class-weighted loss"] if weighted else [])
    if len(rebalancers) > 1 and not allow_double:
        raise CnnlabError(
            f"--balance {' + '.join(rebalancers)} corrects the class frequencies twice (each alone already gives "
            "every class equal total weight, together they over-weight the minority classes); pick one, or "
            "apply both on purpose with --set balance.allow_double=true")
    if "threshold" in methods and not binary:
        raise CnnlabError("--balance threshold is for two-class tasks; for more classes use class_weights or "
                          "oversample")
    if "threshold" in methods and not has_val:
        raise CnnlabError("--balance threshold picks the threshold on the val split; keep a val split "
                          "(--val-split > 0)")
    return rebalancers


def plan_balance(cfg, labels: torch.Tensor, num_classes: int, has_val: bool,
                 log: Callable[[str], None] = print) -> BalancePlan:
    """Measure the train split, check `cfg.balance`, and decide what the run needs (cfg is only read).

    Decides the methods (normalised), the loss and its class weights, and, for an imbalanced train split with
    `monitor: auto`, the monitored metric (val_roc_auc for two classes, else val_balanced_accuracy). Logs the
    counts, the ratio and every treatment applied.
    """
    b = cfg.balance
    counts = class_counts(labels, num_classes)
    ratio = imbalance_ratio(counts)
    methods = parse_methods(b.methods)
    binary = num_classes == 2
    focal = "focal" in methods or cfg.train.loss == "focal"
    manual = b.weights is not None and "class_weights" not in methods and b.focal_alpha is None
    weighted = "class_weights" in methods or (focal and b.focal_alpha is not None) or manual
    rebalancers = _check_combination(methods, weighted, b.allow_double, binary, has_val)
    plan = BalancePlan(counts.tolist(), ratio, ratio >= IMBALANCED_RATIO, methods,
                       sampler=next((m for m in methods if m in SAMPLERS), None),
                       synthetic=next((m for m in methods if m in SYNTHETIC), None),
                       threshold="threshold" in methods, loss=cfg.train.loss, weights=b.weights,
                       monitor=cfg.callbacks.monitor)
    log(f"train class counts: {_format_counts(counts)}; imbalance ratio {ratio:.2f}")
    _resolve_loss(cfg, counts, methods, binary, plan)
    follow = ""
    if plan.imbalanced and plan.monitor == "auto":
        plan.monitor = ("val_roc_auc" if binary else "val_balanced_accuracy") if has_val else "balanced_accuracy"
        follow = f"checkpoints and early stopping follow {plan.monitor}"
    warned = ratio >= WARN_RATIO and not methods
    if warned:  # one line says it all: imbalanced, what follows from it, what to do
        log(f"warning: imbalanced train split (ratio {ratio:.1f})" + (f": {follow}" if follow else "")
            + "; consider --balance oversample, class_weights or focal")
    if follow:
        plan.notes.append(f"imbalanced train split: {follow}")
    if len(rebalancers) > 1:
        plan.notes.append(f"warning: double correction applied on purpose ({' + '.join(rebalancers)}, "
                          "balance.allow_double=true)")
    for m in methods:
        if m not in ("class_weights", "focal"):
            plan.notes.append(f"{m}: {METHODS[m]}")
    for note in plan.notes:
        if not (warned and note.startswith("imbalanced train split")):  # the warning said it
            log(f"balance: {note}")
    return plan


def _format_counts(counts: np.ndarray) -> str:
    if len(counts) <= 20:
        return ", ".join(str(int(c)) for c in counts)
    return f"{len(counts)} classes, smallest {int(counts.min())} (class {int(counts.argmin())}), largest " \
           f"{int(counts.max())} (class {int(counts.argmax())})"


def _resolve_loss(cfg, counts: np.ndarray, methods: list[str], binary: bool, plan: BalancePlan) -> None:
    """The plan's loss and class weights from cfg.balance and the train counts."""
    b = cfg.balance
    if b.weights is not None and "class_weights" not in methods and b.focal_alpha is None:
        if len(b.weights) != len(counts):
            raise CnnlabError(f"balance.weights has {len(b.weights)} values for {len(counts)} classes")
        plan.notes.append("class-weighted loss (balance.weights as given): " + ", ".join(f"{w:.3g}" for w in b.weights))
    if "focal" in methods:
        if plan.loss not in ("cross_entropy", "focal"):
            raise CnnlabError(f"--balance focal replaces the cross-entropy loss; it cannot be combined with "
                              f"--loss {plan.loss}")
        plan.loss = "focal"
    if "class_weights" in methods:
        weights = compute_class_weights(counts, b.class_weights, b.beta)
        plan.weights = [round(float(w), 6) for w in weights]
        plan.notes.append(f"class-weighted loss ({b.class_weights}" + (f", beta {b.beta}" if b.class_weights ==
                          "effective" else "") + "): " + ", ".join(f"{w:.3g}" for w in plan.weights))
    if b.focal_alpha is not None and plan.loss == "focal":
        if not binary:
            raise CnnlabError("balance.focal_alpha is the positive-class weight of a two-class task; for more "
                              "classes combine focal with class_weights")
        if plan.weights is not None and "class_weights" in methods:
            alpha = np.array([1 - b.focal_alpha, b.focal_alpha])
            plan.weights = [round(float(w), 6) for w in np.asarray(plan.weights) * alpha * 2]
        else:
            plan.weights = [1 - b.focal_alpha, b.focal_alpha]
    if plan.loss == "focal":
        plan.notes.append(f"focal loss (gamma {b.focal_gamma}" + (f", alpha {b.focal_alpha}" if b.focal_alpha
                          is not None else "") + ")")


def apply_synthetic(plan: BalancePlan, x: torch.Tensor, y: torch.Tensor, k: int, seed: int,
                    log: Callable[[str], None] = print) -> tuple[torch.Tensor, torch.Tensor]:
    """The train split after the plan's SMOTE / Borderline-SMOTE / ADASYN on pixels (unchanged without one)."""
    if plan.synthetic is None:
        return x, y
    num_classes = len(plan.counts)
    x_new, y_new = resample_pixels(x.cpu(), y.cpu(), plan.synthetic, k, seed)
    note = (f"{plan.synthetic} applied on the flattened uint8 pixels of the train split (k={k}): {len(y)} -> "
            f"{len(y_new)} images, class counts " + ", ".join(str(int(c)) for c in class_counts(y_new, num_classes)))
    plan.notes.append(note)
    log(f"balance: {note}")
    return x_new, y_new


def headline_metrics(plan: BalancePlan, num_classes: int, has_val: bool) -> list[str]:
    """Extra epoch-line metrics: balanced accuracy and macro F1 when imbalanced; ROC AUC and PR AUC for 2 classes."""
    keys = ["balanced_accuracy", "f1"] if plan.imbalanced else []
    if has_val:
        keys = [f"val_{k}" for k in keys] + (["val_roc_auc", "val_pr_auc"] if num_classes == 2 else [])
    return keys
