"""The one table of options: every setting of a run, with its flag, `fit()` keyword, help, choices and check.

A field's CLI flag is `--<name>` and its keyword `<name>` unless the line says otherwise; every field can also be set
as `--set section.key=value`, `fit(section__key=...)` or in a YAML config. Adding an option is one line here.
Choices that name registered things (losses, optimizers, schedules) are read from the registering modules' source
(cnnlab.registry), so checking them needs no torch.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Any

from cnnlab.config.options import Section, option
from cnnlab.registry import scan_registrations

NORMALIZE_MODES = ("standardize", "scale", "model", "zero_center", "per_image", "zca", "pca")
# Augmentation presets: the value of every option each one sets (options a user sets override them).
AUGMENT_PRESETS: dict[str, dict[str, float]] = {
    "none": {},
    "light": {"hflip": 0.5, "translate": 0.1},
    "medium": {"hflip": 0.5, "rotate": 15, "translate": 0.1, "scale": 0.1, "crop_scale": 0.8, "color": 0.2,
               "erase": 0.25},
    "heavy": {"hflip": 0.5, "rotate": 25, "translate": 0.15, "scale": 0.2, "crop_scale": 0.5, "color": 0.4,
              "erase": 0.5, "noise": 0.03, "jpeg": 0.3, "mixup": 0.2, "cutmix": 1.0},
}
BALANCE_METHODS = {
    "oversample": "weighted sampler with replacement (each class equally likely per draw)",
    "undersample": "balanced subset of every class each epoch, rotating through the majority classes",
    "class_weights": "per-class loss weights (balance.class_weights: inverse | effective)",
    "focal": "focal loss (balance.focal_gamma, balance.focal_alpha)",
    "smote": "SMOTE on the flattened pixels of the train split",
    "borderline_smote": "Borderline-SMOTE on the flattened pixels of the train split",
    "adasyn": "ADASYN on the flattened pixels of the train split",
    "threshold": "binary: decision threshold maximizing val balanced accuracy",
}
# The modules whose import registers the built-in tasks (cnnlab.tasks.base.TASKS), read here from their source.
TASK_MODULES = ("cnnlab.tasks.classification.task",)
STRATEGIES = ("none", "feature-extract", "fine-tune", "full", "auto")
HEADS = ("linear", "mlp", "logreg")


def registered(module: str, decorator: str):
    """Choices that are the names a module registers (read from its source, without importing it)."""
    return lambda: sorted(scan_registrations(module, decorator))


def task_name(v: str) -> str | None:
    """A registered task, or `package.module:Class` (a cnnlab.tasks.Task subclass, checked when it is built)."""
    known = sorted({n for m in TASK_MODULES for n in scan_registrations(m, "register_task")})
    if ":" in v or v in known:
        return None
    return f"must be a task ({', '.join(known)}) or a cnnlab.tasks.Task subclass as package.module:Class"


def parse_methods(methods: list[str] | str) -> list[str]:
    """`oversample,class_weights` or a list -> method names, lower case, '-' as '_', in order, without repeats."""
    items = methods.split(",") if isinstance(methods, str) else list(methods)
    out: list[str] = []
    for item in (str(m).strip().lower().replace("-", "_") for m in items):
        if item not in ("", "none") and item not in out:
            out.append(item)
    return out


# checks: each returns what is wrong with a value, or None
def positive(v: Any) -> str | None:
    return None if v > 0 else "must be positive"


def at_least(lo: float):
    return lambda v: None if v >= lo else f"must be at least {lo}"


def fraction(v: float) -> str | None:
    return None if 0 <= v < 1 else "must be in [0, 1)"


def probability(v: float) -> str | None:
    return None if 0 <= v <= 1 else "is a probability in [0, 1]"


def open_unit(v: float) -> str | None:
    return None if 0 < v < 1 else "must be between 0 and 1"


def count_or(*words: str):
    def check(v: Any) -> str | None:
        if v in words or (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
            return None
        return f"must be a positive number or {' / '.join(repr(w) for w in words)}"

    return check


@dataclass
class DataConfig(Section):
    source: str = option("digits", "folder, .zip, .csv (+ images), .npz, MNIST IDX folder, or a builtin name: "
                         "digits, mnist, fashion_mnist, cifar10", flag="DATA", keyword="data")
    val_split: float = option(0.2, "fraction held out for validation when DATA has no val split", check=fraction)
    image_size: int | None = option(None, "square side in pixels (default: native if uniform, else the median "
                                    "short side)", check=positive)
    channels: int | None = option(None, "1 (grayscale) or 3 (RGB); default: 1 if every image is grayscale",
                                  choices=(1, 3))
    resize: str = option("crop", "crop (short side + center crop) or squash", choices=("crop", "squash"))
    images: str | None = option(None, "image folder or zip for a CSV (default: detected beside it)")
    id_col: str | None = option(None, "CSV column with image ids (default: detected)")
    label_col: str | None = option(None, "CSV column with labels (default: detected)")
    skip_missing: bool = option(False, "skip CSV ids that have no image instead of stopping")
    memory_budget_mb: int = option(4096, "decoded uint8 images up to this size are held in memory; larger ones "
                                   "stream", check=at_least(0))
    val_source: str = option("split", "split: held-out val (or the data's val folder); test: validate on the test "
                             "split", choices=("split", "test"))
    normalize: str = option("auto", "auto (model for transfer strategies, else standardize), standardize (train "
                            "mean/std), scale ([0,1]), model (the model's mean/std), zero_center (VGG), per_image "
                            "(AlexNet), zca / pca (whitening fitted on train)", choices=("auto", *NORMALIZE_MODES))
    mean: list[float] | None = option(None, "per-channel mean in [0,1] units (default: resolved from the data or "
                                      "the model)", metavar="M[,M,M]")
    std: list[float] | None = option(None, "per-channel std in [0,1] units (default: resolved)", metavar="S[,S,S]")
    whiten_eps: float = option(0.01, "added to the covariance eigenvalues before zca / pca whitening",
                               check=positive)
    cache: bool = option(True, "decoded-image cache for folder / zip / csv data ($CNNLAB_CACHE_DIR)")
    workers: int = option(2, "DataLoader worker processes when streaming", check=at_least(0))
    max_image_pixels: int = option(400_000_000, "larger images are skipped (decompression-bomb limit)",
                                   check=positive)


@dataclass
class AugmentConfig(Section):
    """Training-time augmentation (cnnlab.data.augment). A preset fills every option; set options override it."""

    preset: str = option("none", "training augmentation preset", flag="--augment", keyword="augment",
                         choices=tuple(AUGMENT_PRESETS))
    hflip: float | None = option(None, "probability of a horizontal flip", check=probability)
    vflip: float | None = option(None, "probability of a vertical flip", check=probability)
    rotate: float | None = option(None, "max rotation in degrees, +-", check=at_least(0))
    translate: float | None = option(None, "max shift, fraction of the side", check=at_least(0))
    scale: float | None = option(None, "max zoom in / out, e.g. 0.1 -> 0.9..1.1", check=at_least(0))
    crop_scale: float | None = option(None, "random resized crop: min area fraction (1.0 = off)",
                                      check=lambda v: None if 0 < v <= 1 else "must be in (0, 1]")
    color: float | None = option(None, "brightness / contrast / saturation jitter strength", check=at_least(0))
    erase: float | None = option(None, "probability of random erasing (cutout)", check=probability)
    noise: float | None = option(None, "Gaussian noise std in [0,1] pixel units", check=at_least(0))
    jpeg: float | None = option(None, "probability of JPEG-compression noise", check=probability)
    mixup: float | None = option(None, "Beta(alpha, alpha) of mixup; 0 = off", check=at_least(0))
    cutmix: float | None = option(None, "Beta(alpha, alpha) of cutmix; 0 = off", check=at_least(0))
    groups: int = option(16, "random parameters drawn per group of a batch", flag="--augment-groups",
                         keyword="augment_groups", check=positive)


@dataclass
class ModelConfig(Section):
    name: str = option("seed_cnn", "model name (cnnlab models), timm:<name>, or a layer-spec .yaml",
                       flag="--model", keyword="model")
    kwargs: dict[str, Any] = option({}, "model option, e.g. --model-arg dropout=0.3 (repeatable)",
                                    flag="--model-arg", keyword="model_kwargs", metavar="KEY=VALUE")
    weights: str | None = option(None, "start from a local checkpoint (.safetensors, .pth, .pt, .th, .tar)")
    pretrained: bool = option(False, "download pretrained weights (timm models, online)")
    skip_head: bool | None = option(None, "load --weights without its classifier (default: yes with a transfer "
                                    "--strategy)")
    allow_partial: bool = option(False, "load only the tensors of --weights that fit the model, report the rest")


@dataclass
class TrainConfig(Section):
    epochs: int | str = option("auto", "a number, or auto: about 1,200 optimizer steps (3 to 30 epochs; about 180 "
                               "when fine-tuning)", check=count_or("auto"))
    batch_size: int | str = option("auto", "mini-batch size; full: batch gradient descent, 1: stochastic; auto: "
                                   "128, or 32 when fine-tuning", check=count_or("auto", "full"))
    optimizer: str = option("adam", "update rule", choices=registered("cnnlab.train.optim", "OPTIMIZERS.register"))
    lr: float | str | None = option(None, "(peak) learning rate (default: the optimizer's: adam 3e-3, sgd 0.05); "
                                    "find: the range test of cnnlab doctor picks it (written to config.yaml)",
                                    check=lambda v: None if v == "find" or (not isinstance(v, str) and v > 0)
                                    else "must be positive, or find")
    checks: bool = option(True, "before training, the cheap checks of cnnlab doctor (data, initial loss): a "
                          "one-line warning each")
    momentum: float = option(0.9, "SGD / RMSprop momentum", check=at_least(0))
    nesterov: bool = option(False, "Nesterov momentum (sgd)")
    weight_decay: float = option(0.0, "L2 weight decay (on weights, not on biases and norm scales)",
                                 check=at_least(0))
    decay_bias_and_norm: bool = option(False, "weight decay on biases and norm scales too")
    schedule: str = option("onecycle", "learning-rate schedule",
                           choices=registered("cnnlab.train.optim", "SCHEDULES.register"))
    warmup_epochs: float = option(0.0, "linear warmup, in epochs", check=at_least(0))
    step_size: int = option(10, "epochs between drops of the step schedule", check=positive)
    gamma: float = option(0.1, "drop factor of the step schedule", flag="--step-gamma", keyword="step_gamma",
                          check=positive)
    loss: str = option("cross_entropy", "loss function",
                       choices=registered("cnnlab.tasks.classification.losses", "LOSSES.register"))
    label_smoothing: float = option(0.0, "label smoothing of the cross-entropy", check=fraction)
    top_k: int = option(5, "k of the top-k accuracy", check=positive)
    grad_clip: float | None = option(None, "clip the gradient norm to this", check=positive)
    seed: int = option(0, "random seed (data split, init, shuffling, augmentation)")
    device: str = option("auto", "auto, cpu, cuda, cuda:N or mps")
    precision: str = option("auto", "auto: bf16 on GPUs and CPUs with native bf16, else fp32",
                            choices=("auto", "fp32", "bf16", "fp16"))
    eval_batch_size: int = option(512, "batch size of evaluation and prediction", check=positive)
    checkpoint_every_steps: int | None = option(None, "also save the `last` checkpoint every N steps, so a crash "
                                                "loses at most N steps", flag="--checkpoint-every",
                                                keyword="checkpoint_every", metavar="N", check=positive)
    nan_policy: str = option("rollback", "on a NaN / Inf loss: rollback (last good state, lower lr) or stop",
                             choices=("rollback", "stop"))
    nan_retries: int = option(3, "NaN rollbacks before stopping with advice", check=at_least(0))
    nan_lr_factor: float = option(0.5, "learning-rate multiplier at each NaN rollback", check=open_unit)


@dataclass
class CallbacksConfig(Section):
    monitor: str = option("auto", "metric for checkpoints and early stopping (auto: val_accuracy; val_roc_auc or "
                          "val_balanced_accuracy for imbalanced data)")
    checkpoint: bool = option(True, "ModelCheckpoint: keep the best weights on the monitored metric")
    early_stopping: int | None = option(None, "stop after PATIENCE epochs without improvement", metavar="PATIENCE",
                                        check=at_least(0))
    restore_best: bool = option(True, "early stopping restores the best weights")
    reduce_lr: int | None = option(None, "ReduceLROnPlateau patience in epochs", metavar="PATIENCE",
                                   check=at_least(0))
    reduce_lr_factor: float = option(0.1, "ReduceLROnPlateau factor", check=open_unit)
    min_lr: float = option(0.0, "ReduceLROnPlateau lower bound", check=at_least(0))
    target: float | None = option(None, "stop once the monitored metric reaches this value")
    csv: bool = option(True, "CSVLogger: metrics.csv, a row per epoch", flag="--csv-log", keyword="csv_log")
    tensorboard: bool = option(True, "TensorBoard scalars in the run folder")
    report: bool = option(False, "at the end, write RUN/report/index.html: curves, confusion matrix with its "
                          "images, Grad-CAM, calibration (as cnnlab report RUN)")


@dataclass
class BalanceConfig(Section):
    """Imbalanced data (cnnlab/data/balance.py): treatments and their settings."""

    methods: list[str] = option([], "imbalanced data, comma-separated: " + ", ".join(BALANCE_METHODS),
                                flag="--balance", keyword="balance", choices=tuple(BALANCE_METHODS), many=True,
                                parse=parse_methods)
    class_weights: str = option("inverse", "class weights: inverse or effective (effective number of samples)",
                                flag="--class-weighting", keyword="class_weighting", choices=("inverse", "effective"))
    beta: float = option(0.999, "beta of the effective number of samples", flag="--effective-beta",
                         keyword="effective_beta", check=fraction)
    weights: list[float] | None = option(None, "per-class loss weights (resolved, or given by hand)",
                                         flag="--loss-weights", keyword="loss_weights", metavar="W,W,...")
    focal_gamma: float = option(2.0, "focal loss gamma", check=at_least(0))
    focal_alpha: float | None = option(None, "focal loss, two classes: the weight of class 1", check=open_unit)
    smote_k: int = option(5, "neighbours of smote / borderline_smote / adasyn", check=positive)
    epoch_samples: int | None = option(None, "oversample: draws per epoch (default N); undersample: per class "
                                       "(default the smallest class)", check=positive)
    allow_double: bool = option(False, "apply a sampler / SMOTE together with class weights (double correction)")


@dataclass
class TransferConfig(Section):
    """Transfer learning from `model.weights` / `model.pretrained` (cnnlab.transfer)."""

    strategy: str = option("none", "feature-extract (a new head on cached bottleneck features), fine-tune (also "
                           "the last --unfreeze blocks), full, auto (decide from the data)", choices=STRATEGIES)
    unfreeze: int = option(4, "fine-tune: blocks trained besides the head", metavar="N", check=at_least(0))
    head: str = option("linear", "new classifier: linear, mlp, or logreg (scikit-learn, with feature-extract)",
                       choices=HEADS)
    head_hidden: int = option(256, "mlp head width", check=positive)
    head_dropout: float = option(0.2, "dropout before each mlp head layer", check=fraction)
    lr_decay: float = option(0.7, "discriminative LRs: lr * lr_decay ** (groups between a block and the head)",
                             check=lambda v: None if 0 < v <= 1 else "must be in (0, 1]")
    gradual: bool = option(False, "unfreeze one more layer group per epoch, head first")
    freeze_bn: str = option("auto", "freeze batch-norm statistics: auto (frozen groups; all when batch < 16), "
                            "true (all), false (only frozen groups)", choices=("auto", "true", "false"))
    views: int = option(1, "feature-extract: 1 = the eval transform; K > 1 adds K-1 flipped / shifted views",
                        check=positive)
    cache: bool = option(True, "feature-extract: cache bottleneck features on disk", flag="--feature-cache",
                         keyword="feature_cache")


@dataclass
class DistributedConfig(Section):
    """torch.distributed (cnnlab.distributed): worker processes, backend, timeouts, the learning-rate rule."""

    nproc: int = option(1, "worker processes on this machine (torch.distributed: gloo on the CPU, nccl on GPUs); "
                        "under torchrun the world comes from its environment", check=positive)
    backend: str = option("auto", "process-group backend (auto: nccl on CUDA, else gloo)", flag="--dist-backend",
                          keyword="dist_backend", choices=("auto", "gloo", "nccl"))
    timeout: float = option(60.0, "seconds a rank waits for the others in a collective before the job stops",
                            flag="--dist-timeout", keyword="dist_timeout", check=positive)
    scale_lr: bool = option(False, "linear scaling rule: lr x global batch / reference batch (printed; the scaled lr "
                            "is written to train.lr)")
    reference_batch: int = option(128, "the batch size the learning rate was chosen for (the scale_lr rule)",
                                  check=positive)
    sync_bn: bool = option(False, "SyncBatchNorm: batch-norm statistics over every rank's part of a batch (GPUs)")


@dataclass
class Config(Section):
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    callbacks: CallbacksConfig = field(default_factory=CallbacksConfig)
    balance: BalanceConfig = field(default_factory=BalanceConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    task: str = option("classify", "what the model learns: classify (one class per image), or a "
                       "cnnlab.tasks.Task subclass as package.module:Class", check=task_name)
    out: str | None = option(None, "run folder (default runs/<time>-<model>); never overwritten")
    verbose: int = option(1, "0 silent, 1 progress bar and epoch lines, 2 epoch lines only (as Keras)",
                          choices=(0, 1, 2))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def copy(self) -> Config:
        """A deep copy that can be changed (the resolved config of a run is read-only)."""
        return thaw(copy.deepcopy(self))


def thaw(section: Section) -> Any:
    """Make a (copied) section and its subsections writable again."""
    object.__setattr__(section, "_frozen", False)
    for value in vars(section).values():
        if isinstance(value, Section):
            thaw(value)
    return section
