"""Transfer learning: layer groups, freezing, discriminative learning rates, bottleneck features, strategy choice.

Owns the three regimes of `--strategy`:
- `feature-extract`: the pretrained backbone is frozen (eval mode); its pooled pre-logits ("bottleneck")
  features are computed once per (backbone weights, model, data, geometry, normalisation, views, precision),
  cached on disk (`$CNNLAB_CACHE_DIR/features`, default ~/.cache/cnnlab/features) and only the new head is trained on
  them: a linear layer, a small MLP with dropout, or scikit-learn's logistic regression (`--head logreg`).
  The run folder still holds the FULL model (backbone + trained head) in best.safetensors.
- `fine-tune` (the last `unfreeze` blocks and the head) and `full` (every group): one optimizer parameter group
  per layer group with learning rate lr * lr_decay ** (groups between it and the head), batch-norm statistics
  frozen in frozen groups (and everywhere for batches under 16 with freeze_bn=auto), optional gradual
  unfreezing (head first, then one deeper group per epoch).
- `auto`: images per class and a linear probe on the cached features decide; the reasoning is printed and
  written to transfer.json in the run folder.
Layer groups come from the model's timm-style `group_matcher()` (stem / blocks / head regexes), never from
names hard-coded here.

Public pieces for other features (e.g. resampling cached features for imbalanced data):
`extract_features`, `load_or_compute_features`, `compute_features`, `fit_logreg_head`, `layer_groups`.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch import nn

from cnnlab.config import Config
from cnnlab.data.dataset import DecodedSplit
from cnnlab.errors import CnnlabError
from cnnlab.train.callbacks import Callback
from cnnlab.train.loop import Trainer

STRATEGIES = ("none", "feature-extract", "fine-tune", "full", "auto")
HEADS = ("linear", "mlp", "logreg")
FEATURE_VERSION = 1  # bump when the feature computation changes: old cache entries are then never reused
CACHE_ENV = "CNNLAB_CACHE_DIR"
# auto: thresholds on the smallest class of the training split and on the linear probe's balanced accuracy
AUTO_FEW_IMAGES = 100  # fewer per class: fine-tuning would overfit, train the head only (the course notes' regime 1)
AUTO_MANY_IMAGES = 5000  # more per class: enough data to train every layer
AUTO_PROBE_GOOD = 0.95  # the pretrained features already separate the classes: a new head is enough


def is_transfer(cfg: Config) -> bool:
    return cfg.transfer.strategy != "none"


def validate_transfer(cfg: Config) -> None:
    """Refuse unknown strategy / head / freeze_bn values and a transfer strategy with nothing to transfer."""
    t = cfg.transfer
    if t.strategy not in STRATEGIES:
        raise CnnlabError(f"unknown --strategy '{t.strategy}': choose one of {', '.join(STRATEGIES)}")
    if t.head not in HEADS:
        raise CnnlabError(f"unknown --head '{t.head}': choose linear, mlp or logreg")
    if str(t.freeze_bn).lower() not in ("auto", "true", "false"):
        raise CnnlabError(f"transfer.freeze_bn must be auto, true or false, got '{t.freeze_bn}'")
    if t.views < 1 or t.unfreeze < 0 or not 0 < t.lr_decay <= 1:
        raise CnnlabError("transfer.views must be >= 1, transfer.unfreeze >= 0 and transfer.lr_decay in (0, 1]")
    if t.strategy != "none" and not (cfg.model.weights or cfg.model.pretrained):
        raise CnnlabError(f"--strategy {t.strategy} transfers pretrained weights: pass --weights FILE (a local "
                          "checkpoint) or --pretrained (timm models, online)")
    if t.head == "logreg" and t.strategy not in ("feature-extract", "auto"):
        raise CnnlabError("--head logreg fits scikit-learn on cached features: use it with --strategy "
                          "feature-extract")


# ------------------------------------------------------------------------------------------------------------
# layer groups and freezing


def layer_groups(model: nn.Module) -> list[list[str]]:
    """Parameter names per layer group, input to output (stem, blocks..., head), from `model.group_matcher()`."""
    matcher = getattr(model, "group_matcher", None)
    if matcher is None:
        raise CnnlabError(f"{type(model).__name__} has no group_matcher(), so its layer groups are unknown: use "
                          "--strategy feature-extract, or add group_matcher() to the model")
    try:
        spec = matcher(coarse=False)
    except NotImplementedError:
        raise CnnlabError(f"{type(model).__name__} does not describe its layer groups (group_matcher)") from None
    from timm.models import group_parameters

    grouped = group_parameters(model, spec)
    groups = [list(grouped[k]) for k in sorted(grouped)]
    head = classifier_param_names(model)
    if head:  # the classifier always ends the list, whatever the matcher says about it
        groups = [[n for n in g if n not in head] for g in groups]
        groups = [g for g in groups if g] + [sorted(head)]
    return groups


def classifier_param_names(model: nn.Module) -> set[str]:
    from cnnlab.models.weights import classifier_prefix

    prefix = classifier_prefix(model)
    return {n for n, _ in model.named_parameters() if prefix and n.startswith(prefix + ".")}


def _keep_eval(module: nn.Module, args: tuple) -> None:
    module.training = False  # a frozen batch norm normalises with, and never updates, its running statistics


def freeze_batchnorm(modules: list[nn.Module]) -> list[Any]:
    """Keep these batch-norm layers in eval mode even inside model.train(); returns the hook handles."""
    return [m.register_forward_pre_hook(_keep_eval) for m in modules]


def batchnorm_layers(model: nn.Module, names: set[str] | None = None) -> list[nn.Module]:
    """Batch-norm modules of `model` (only those whose parameters are all in `names`, when given)."""
    out = []
    for mod_name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            params = [f"{mod_name}.{p}" for p, _ in m.named_parameters(recurse=False)]
            if names is None or (params and all(p in names for p in params)):
                out.append(m)
    return out


def set_trainable(model: nn.Module, names: set[str]) -> None:
    for n, p in model.named_parameters():
        p.requires_grad_(n in names)


def discriminative_param_groups(model: nn.Module, groups: list[list[str]], n_train: int, lr: float,
                                decay: float) -> list[dict[str, Any]]:
    """Optimizer groups for the last `n_train` layer groups: lr * decay ** (distance from the head)."""
    params = dict(model.named_parameters())
    out = []
    for depth, names in enumerate(reversed(groups[len(groups) - n_train:])):
        out.append({"params": [params[n] for n in names], "lr": lr * decay**depth, "name": f"group{depth}"})
    return out


class GradualUnfreeze(Callback):
    """Head first, then one deeper layer group per epoch (ULMFiT's gradual unfreezing)."""

    def __init__(self, model: nn.Module, groups_from_head: list[list[str]], bn_hooks: dict[int, list[Any]]):
        self.model, self.groups, self.bn_hooks = model, groups_from_head, bn_hooks

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any]) -> None:
        k = min(len(self.groups), epoch + 1)
        names = {n for g in self.groups[:k] for n in g}
        set_trainable(self.model, names)
        for depth in range(k):
            for handle in self.bn_hooks.pop(depth, []):
                handle.remove()
        if epoch > 0 and epoch < len(self.groups):
            self.trainer.log(f"GradualUnfreeze: {k} of {len(self.groups)} layer groups trainable")


# ------------------------------------------------------------------------------------------------------------
# heads


def build_head(in_features: int, num_classes: int, kind: str, hidden: int, dropout: float) -> nn.Module:
    """A new classifier on pooled features: Linear, or Dropout-Linear-ReLU-Dropout-Linear (mlp)."""
    if kind == "mlp":
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_features, hidden), nn.ReLU(inplace=True),
                             nn.Dropout(dropout), nn.Linear(hidden, num_classes))
    return nn.Linear(in_features, num_classes)


def apply_head(model: nn.Module, cfg: Config, num_classes: int) -> None:
    """Give a transfer run's model the head its config asks for (build_model calls it, so load_run does too)."""
    if not is_transfer(cfg) or cfg.transfer.head != "mlp":
        return
    from cnnlab.models.weights import classifier_prefix

    prefix = classifier_prefix(model)
    old = model.get_classifier() if prefix else None
    if not isinstance(old, nn.Linear):
        raise CnnlabError(f"--head mlp needs a model whose classifier is one Linear layer ({type(model).__name__})")
    t = cfg.transfer
    parent = model.get_submodule(prefix.rsplit(".", 1)[0]) if "." in prefix else model
    setattr(parent, prefix.rsplit(".", 1)[-1], build_head(old.in_features, num_classes, "mlp", t.head_hidden,
                                                          t.head_dropout))


# ------------------------------------------------------------------------------------------------------------
# bottleneck features and their cache


def pooled_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) normalised images -> (B, D) pooled pre-logits features."""
    if not (hasattr(model, "forward_features") and hasattr(model, "forward_head")):
        raise CnnlabError(f"{type(model).__name__} has no forward_features / forward_head: its bottleneck "
                          "features cannot be computed")
    return model.forward_head(model.forward_features(x), pre_logits=True)


@torch.no_grad()
def extract_features(model: nn.Module, x: torch.Tensor, preprocess: Callable[[torch.Tensor], torch.Tensor],
                     device: torch.device, precision: str = "fp32", batch_size: int = 256) -> torch.Tensor:
    """Pooled pre-logits features (N, D) float32 of uint8 images x (N, C, H, W), model in eval mode, batched."""
    model.eval()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16 if precision == "fp16" else None
    out = []
    for lo in range(0, len(x), batch_size):
        xb = preprocess(x[lo : lo + batch_size].to(device))
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            out.append(pooled_features(model, xb).float().flatten(1).cpu())
    return torch.cat(out) if out else torch.empty(0, 0)


def augmented_view(x: torch.Tensor, view: int, seed: int) -> torch.Tensor:
    """View 0: the images; odd views: mirrored; views >= 2 also shifted by up to 1/8 of the size (zero-padded)."""
    if view == 0:
        return x
    out = x.flip(3) if view % 2 == 1 else x
    if view >= 2:
        g = torch.Generator().manual_seed(seed * 7919 + view)
        h, w = x.shape[2:]
        dy, dx = (int(v) for v in torch.randint(-(h // 8), h // 8 + 1, (2,), generator=g))
        out = torch.roll(out, shifts=(dy, dx), dims=(2, 3))
        if dy > 0:
            out[:, :, :dy] = 0
        elif dy < 0:
            out[:, :, dy:] = 0
        if dx > 0:
            out[:, :, :, :dx] = 0
        elif dx < 0:
            out[:, :, :, dx:] = 0
    return out


def cache_dir() -> Path:
    """$CNNLAB_CACHE_DIR/features (default ~/.cache/cnnlab/features), beside the decoded-image cache."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "cnnlab") / "features"


def _hash_tensor(h: Any, t: torch.Tensor) -> None:
    h.update(str((tuple(t.shape), str(t.dtype))).encode())
    h.update(t.detach().cpu().contiguous().numpy().tobytes() if t.dtype != torch.bfloat16
             else t.detach().float().cpu().numpy().tobytes())


def feature_key(model: nn.Module, cfg: Config, splits: dict[str, DecodedSplit], precision: str) -> str:
    """sha256 of what the features depend on: backbone weights, model name and options, every split's pixels and
    labels, geometry, normalisation, views and precision."""
    h = hashlib.sha256()
    head = classifier_param_names(model)
    for name, t in sorted(model.state_dict().items()):
        if name not in head:
            h.update(name.encode())
            _hash_tensor(h, t)
    d = cfg.data
    meta = {"v": FEATURE_VERSION, "model": cfg.model.name, "kwargs": cfg.model.kwargs, "mean": d.mean,
            "std": d.std, "size": d.image_size, "channels": d.channels, "resize": d.resize,
            "views": cfg.transfer.views, "seed": cfg.train.seed, "precision": precision}
    h.update(json.dumps(meta, sort_keys=True, default=str).encode())
    for split in sorted(splits):
        h.update(split.encode())
        _hash_tensor(h, splits[split].x)
        _hash_tensor(h, splits[split].y)
    return h.hexdigest()


@dataclass
class FeatureSet:
    """Cached bottleneck features: per split (N, D) float32 features and (N,) labels; train holds every view."""

    x: dict[str, torch.Tensor]
    y: dict[str, torch.Tensor]
    key: str = ""
    path: Path | None = None
    hit: bool = False
    seconds: float = 0.0

    def split(self, name: str) -> DecodedSplit:
        return DecodedSplit(self.x[name], self.y[name], [])


def load_or_compute_features(model: nn.Module, cfg: Config, splits: dict[str, DecodedSplit],
                             preprocess: Callable, device: torch.device, precision: str,
                             log: Callable[[str], None] = print) -> FeatureSet:
    """Bottleneck features of every split: from the disk cache when the key matches, else computed and cached."""
    from safetensors.torch import load_file, save_file

    t0 = time.perf_counter()
    key = feature_key(model, cfg, splits, precision)
    path = cache_dir() / f"{key[:40]}.safetensors"
    if cfg.transfer.cache and path.is_file():
        try:
            data = load_file(str(path))
            fs = FeatureSet({s: data[f"{s}.x"] for s in splits}, {s: data[f"{s}.y"] for s in splits}, key, path,
                            True, time.perf_counter() - t0)
            log(f"bottleneck features: cache hit {path} ({fs.seconds:.1f}s)")
            return fs
        except Exception as e:  # noqa: BLE001  (a damaged cache entry is recomputed, never fatal)
            log(f"warning: ignoring unreadable feature cache {path} ({type(e).__name__})")
    xs, ys = {}, {}
    for name, sp in splits.items():
        views = cfg.transfer.views if name == "train" else 1
        feats = [extract_features(model, augmented_view(sp.x, v, cfg.train.seed), preprocess, device, precision)
                 for v in range(views)]
        xs[name], ys[name] = torch.cat(feats), sp.y.repeat(views)
    fs = FeatureSet(xs, ys, key, path if cfg.transfer.cache else None, False, time.perf_counter() - t0)
    if cfg.transfer.cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        save_file({**{f"{s}.x": v.contiguous() for s, v in xs.items()},
                   **{f"{s}.y": v.contiguous() for s, v in ys.items()}}, str(tmp))
        os.replace(tmp, path)
    shapes = ", ".join(f"{s} {tuple(v.shape)}" for s, v in xs.items())
    log(f"bottleneck features: computed in {fs.seconds:.1f}s ({shapes})" + (f", cached in {path}" if fs.path else ""))
    return fs


def compute_features(data: str | None = None, config: Any = None, **kwargs: Any) -> FeatureSet:
    """Bottleneck features of a dataset for a pretrained model, as `fit` would use them (cached).

        fs = compute_features("cats_vs_dogs/", model="mobilenet_v1", weights="mnv1.tar", image_size=160,
                              model_kwargs={"width": 0.25, "activation": "leaky_relu:0.1"})
        x, y = fs.x["train"], fs.y["train"]   # e.g. resample, then fit_logreg_head or any sklearn model
    """
    from cnnlab.api import build_config
    from cnnlab.prepare import build_model, build_normalize, prepare_data, seed_everything
    from cnnlab.train.loop import resolve_device, resolve_precision

    kwargs.setdefault("transfer__strategy", "feature-extract")
    cfg = build_config(data, config, None, **kwargs)
    validate_transfer(cfg)
    seed_everything(cfg.train.seed)
    prepared = prepare_data(cfg, lambda m: None)
    model = build_model(cfg, len(prepared.class_names))
    device = resolve_device(cfg.train.device)
    precision = resolve_precision(cfg.train.precision, device)
    model.to(device)
    return load_or_compute_features(model, cfg, prepared.splits, build_normalize(cfg, device, False), device,
                                    precision, lambda m: None)


# ------------------------------------------------------------------------------------------------------------
# training a head on features


class FeatureTrainer(Trainer):
    """A Trainer whose model is only the head, fed cached features; its checkpoints hold the full model."""

    def __init__(self, full_model: nn.Module, head: nn.Module, **kwargs: Any) -> None:
        super().__init__(head, **kwargs)
        self.full_model = full_model

    def save_weights(self, path: str | Path) -> None:
        from cnnlab.train.checkpoint import save_weights

        save_weights(self.full_model, path)

    def fit(self, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        """One CPU thread: a head's ops are tiny, and with two threads every op waits at a barrier for the
        other (measured: 0.09 s per Adam step on a shared 2-core machine, instead of milliseconds)."""
        threads = torch.get_num_threads()
        if self.device.type == "cpu":
            torch.set_num_threads(1)
        try:
            return super().fit(*args, **kwargs)
        finally:
            torch.set_num_threads(threads)


def make_head_trainer(cfg: Config, model: nn.Module, num_classes: int, device: torch.device,
                      callbacks: list[Callback], console: Any) -> FeatureTrainer:
    from cnnlab.prepare import build_loss, is_regression_loss
    from cnnlab.train.optim import create_optimizer

    head = model.get_classifier()
    head.to(device)
    optimizer = create_optimizer(cfg.train.optimizer, list(head.parameters()), cfg.train.lr, cfg.train.momentum,
                                 cfg.train.nesterov, cfg.train.weight_decay)
    return FeatureTrainer(model, head, loss_fn=build_loss(cfg, num_classes).to(device), optimizer=optimizer,
                          num_classes=num_classes, preprocess=lambda x: x, device=device, precision="fp32",
                          callbacks=callbacks, top_k=cfg.train.top_k, regression=is_regression_loss(cfg),
                          grad_clip=cfg.train.grad_clip, console=console)


def fit_logreg_head(x: torch.Tensor, y: torch.Tensor, num_classes: int, c: float = 0.1,
                    seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logistic regression (scikit-learn, standardised features, L2 with inverse strength `c`) as the weight
    (num_classes, D) and bias (num_classes,) of an equivalent Linear layer on the raw features."""
    from sklearn.linear_model import LogisticRegression

    xn = x.double().numpy()
    mean, std = xn.mean(0), xn.std(0) + 1e-6
    clf = LogisticRegression(C=c, max_iter=1000, random_state=seed).fit((xn - mean) / std, y.numpy())
    coef, intercept = clf.coef_ / std, clf.intercept_ - (clf.coef_ / std) @ mean
    weight, bias = np.zeros((num_classes, x.shape[1])), np.zeros(num_classes)
    classes = clf.classes_.astype(int)
    if coef.shape[0] == 1:  # binary: softmax([0, z]) == sigmoid(z)
        weight[classes[1]], bias[classes[1]] = coef[0], intercept[0]
    else:
        weight[classes], bias[classes] = coef, intercept
        missing = [k for k in range(num_classes) if k not in set(classes)]
        bias[missing] = -1e4  # a class absent from training is never predicted
    return torch.from_numpy(weight).float(), torch.from_numpy(bias).float()


def fit_logreg(trainer: FeatureTrainer, train: Any, val: Any, best_path: Path) -> list[dict[str, Any]]:
    """`--head logreg`: one scikit-learn fit instead of epochs; the Linear head gets its coefficients."""
    t0 = time.perf_counter()
    head = trainer.model
    if not isinstance(head, nn.Linear):
        raise CnnlabError("--head logreg needs the model's classifier to be one Linear layer")
    weight, bias = fit_logreg_head(train.x.cpu(), train.y.cpu(), trainer.num_classes, seed=train.seed)
    with torch.no_grad():
        head.weight.copy_(weight.to(head.weight.device))
        head.bias.copy_(bias.to(head.bias.device))
    logs: dict[str, Any] = {"epoch": 1, **trainer.evaluate(train, prefix="")[0]}
    if val is not None:
        logs.update(trainer.evaluate(val)[0])
    logs["time"] = time.perf_counter() - t0
    trainer.history.append(logs)
    trainer.save_weights(best_path)
    trainer.log("logistic regression head: " + "  ".join(f"{k} {v:.4f}" for k, v in logs.items()
                                                             if k not in ("epoch",) and isinstance(v, float)))
    return trainer.history


# ------------------------------------------------------------------------------------------------------------
# the plan of a transfer run: strategy (auto resolved), freezing, optimizer groups, features


@dataclass
class TransferPlan:
    """What `setup_transfer` decided for one run; `record` is written to transfer.json."""

    strategy: str
    features: FeatureSet | None = None
    param_groups: list[dict[str, Any]] | None = None
    callbacks: list[Callback] = field(default_factory=list)
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def feature_data(self) -> SimpleNamespace | None:
        """The cached features shaped like PreparedData (`.splits`), for the loop and the final metrics."""
        if self.strategy != "feature-extract" or self.features is None:
            return None
        return SimpleNamespace(splits={s: self.features.split(s) for s in self.features.x})


def linear_probe(fs: FeatureSet, num_classes: int, seed: int = 0) -> dict[str, Any]:
    """Balanced accuracy of a logistic regression on the cached features: on val, else 3-fold on train."""
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import StratifiedKFold

    def score(xtr, ytr, xte, yte) -> float:
        w, b = fit_logreg_head(xtr, ytr, num_classes, seed=seed)
        return float(balanced_accuracy_score(yte.numpy(), (xte @ w.T + b).argmax(1).numpy()))

    if "val" in fs.x:
        return {"balanced_accuracy": round(score(fs.x["train"], fs.y["train"], fs.x["val"], fs.y["val"]), 4),
                "on": "val"}
    ytr = fs.y["train"].numpy()
    folds = StratifiedKFold(n_splits=min(3, int(np.bincount(ytr).min())), shuffle=True, random_state=seed)
    x, y = fs.x["train"], fs.y["train"]
    scores = [score(x[a], y[a], x[b], y[b]) for a, b in folds.split(x.numpy(), ytr)]
    return {"balanced_accuracy": round(float(np.mean(scores)), 4), "on": f"{len(scores)}-fold cross-validation"}


def choose_strategy(per_class: list[int], probe: dict[str, Any], unfreeze: int) -> tuple[str, list[str]]:
    """feature-extract with few images per class or separable features; full with many; else fine-tune."""
    fewest, acc = min(per_class), probe["balanced_accuracy"]
    facts = f"{fewest} training images in the smallest class; a linear probe reaches {acc:.1%} balanced accuracy " \
            f"({probe['on']})"
    if fewest < AUTO_FEW_IMAGES:
        return "feature-extract", [facts, f"under {AUTO_FEW_IMAGES} images per class, training more than a new "
                                          "head would overfit: feature extraction"]
    if acc >= AUTO_PROBE_GOOD:
        return "feature-extract", [facts, f"the pretrained features already separate the classes (probe >= "
                                          f"{AUTO_PROBE_GOOD:.0%}): a new head on them is enough"]
    if fewest >= AUTO_MANY_IMAGES:
        return "full", [facts, f"{AUTO_MANY_IMAGES}+ images per class are enough to train every layer, with "
                               "discriminative learning rates"]
    return "fine-tune", [facts, f"enough data to adapt the upper layers but not all: fine-tune the last {unfreeze} "
                                "blocks and a new head"]


def _batch_size(cfg: Config, n: int, strategy: str) -> int:
    from cnnlab.train.optim import resolve_batch_size

    bs = resolve_batch_size(cfg.train.batch_size, strategy)
    return n if bs == "full" else int(bs)


def _setup_layers(model: nn.Module, cfg: Config, strategy: str, n_train_images: int) -> TransferPlan:
    """Freeze, build the discriminative-LR optimizer groups and the batch-norm policy of fine-tune / full."""
    from cnnlab.train.optim import DEFAULT_LR

    t = cfg.transfer
    groups = layer_groups(model)
    n_train = len(groups) if strategy == "full" else min(len(groups), t.unfreeze + 1)
    trainable, frozen = groups[len(groups) - n_train:], groups[: len(groups) - n_train]
    lr = cfg.train.lr if cfg.train.lr is not None else DEFAULT_LR[cfg.train.optimizer.lower()]
    pgroups = discriminative_param_groups(model, groups, n_train, lr, t.lr_decay)
    bs = _batch_size(cfg, n_train_images, strategy)
    flag = str(t.freeze_bn).lower()
    all_bn = flag == "true" or (flag == "auto" and bs < 16)
    frozen_names = {n for g in frozen for n in g}
    handles = freeze_batchnorm(batchnorm_layers(model, None if all_bn else frozen_names))
    callbacks: list[Callback] = []
    from_head = list(reversed(trainable))
    if t.gradual:
        bn_hooks = {} if all_bn else {d: freeze_batchnorm(batchnorm_layers(model, set(g)))
                                      for d, g in enumerate(from_head) if d > 0}
        callbacks.append(GradualUnfreeze(model, from_head, bn_hooks))
        set_trainable(model, set(from_head[0]))
    else:
        set_trainable(model, {n for g in trainable for n in g})
    record = {"layer_groups": len(groups), "trainable_groups": n_train,
              "group_lrs": [round(g["lr"], 8) for g in pgroups],
              "first_trainable": trainable[0][0] if trainable and trainable[0] else None,
              "frozen_batchnorm": len(handles), "batchnorm_all_frozen": all_bn, "gradual": t.gradual}
    return TransferPlan(strategy, param_groups=pgroups, callbacks=callbacks, record=record)


def setup_transfer(cfg: Config, model: nn.Module, prepared: Any, device: torch.device, precision: str,
                   log: Callable[[str], None] = print) -> TransferPlan:
    """Resolve `auto`, compute / reuse bottleneck features when needed, freeze layers and build LR groups."""
    from cnnlab.prepare import build_normalize, has_conv

    validate_transfer(cfg)
    t = cfg.transfer
    strategy, features, auto = t.strategy, None, None
    if strategy in ("feature-extract", "auto"):
        channels_last = has_conv(model)
        model.to(device)
        if channels_last:
            model.to(memory_format=torch.channels_last)
        features = load_or_compute_features(model, cfg, prepared.splits, build_normalize(cfg, device, channels_last),
                                            device, precision, log)
    num_classes = len(prepared.class_names)
    train_y = prepared.splits["train"].y.numpy()
    per_class = np.bincount(train_y, minlength=num_classes).tolist()
    if strategy == "auto":
        probe = linear_probe(features, num_classes, cfg.train.seed)
        strategy, reasons = choose_strategy(per_class, probe, t.unfreeze)
        auto = {"images_per_class": dict(zip(prepared.class_names, per_class)), "probe": probe,
                "thresholds": {"few_images": AUTO_FEW_IMAGES, "many_images": AUTO_MANY_IMAGES,
                               "probe_good": AUTO_PROBE_GOOD}, "reasoning": reasons, "chosen": strategy}
        for line in reasons:
            log(f"strategy auto: {line}")
        log(f"strategy auto: chose {strategy}")
    if cfg.model.skip_head is not False:
        _zero_last_linear(model.get_classifier())  # a new head starts from "no opinion": loss log(C)
    if strategy == "feature-extract":
        set_trainable(model, classifier_param_names(model))
        plan = TransferPlan(strategy, record={"layer_groups": None, "trainable_groups": 1})
    else:
        if t.head == "logreg":
            log("note: --head logreg applies to feature extraction; fine-tuning trains a linear head")
        plan = _setup_layers(model, cfg, strategy, len(train_y))
    plan.features = features
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    plan.record = {"requested": t.strategy, "strategy": strategy, "head": t.head, **plan.record,
                   "trainable_parameters": n_trainable,
                   "parameters": sum(p.numel() for p in model.parameters())}
    if features is not None:
        plan.record["features"] = {"cache_hit": features.hit, "seconds": round(features.seconds, 3),
                                   "key": features.key, "file": str(features.path) if features.path else None,
                                   "dim": int(features.x["train"].shape[1]), "views": t.views}
    if auto is not None:
        plan.record["auto"] = auto
    return plan


def _zero_last_linear(head: nn.Module) -> None:
    last = [m for m in head.modules() if isinstance(m, nn.Linear)]
    if last:
        with torch.no_grad():
            last[-1].weight.zero_()
            last[-1].bias.zero_()


def write_transfer_record(run_dir: Path, plan: TransferPlan, metrics: dict[str, Any]) -> None:
    """transfer.json: the strategy (and auto's reasoning), groups, learning rates, feature cache and results."""
    record = dict(plan.record)
    record["val"] = {k: v for k, v in (metrics.get("val") or {}).items() if k != "confusion_matrix"}
    (Path(run_dir) / "transfer.json").write_text(json.dumps(record, indent=2), encoding="utf-8")
