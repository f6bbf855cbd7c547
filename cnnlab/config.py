"""Run configuration: dataclass sections, YAML load/save (safe_load only) and dotted overrides.

Precedence, lowest first: defaults < `--config FILE.yaml` < CLI flags < `--set section.key=value`.
The resolved config is written to every run folder as config.yaml; `cnnlab train --config
runs/X/config.yaml` reruns it.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cnnlab.errors import CnnlabError


@dataclass
class DataConfig:
    source: str = "digits"
    val_split: float = 0.2
    image_size: int | None = None  # square side in pixels; None: native if uniform, else median short side
    channels: int | None = None  # 1 or 3; None: 1 if every image is grayscale, else 3
    resize: str = "crop"  # crop (short side + center crop) | squash
    images: str | None = None  # image folder or zip for a CSV source (default: detected beside the CSV)
    id_col: str | None = None  # CSV id column (default: detected)
    label_col: str | None = None  # CSV label column (default: detected)
    skip_missing: bool = False  # CSV ids without an image: skip them instead of stopping
    memory_budget_mb: int = 4096  # decoded uint8 images up to this size are held in memory; larger ones stream
    val_source: str = "split"  # split: held-out val (or the data's val folder); test: validate on the test split
    normalize: str = "auto"  # auto: model for transfer strategies, else standardize
    # | standardize (train mean/std) | scale ([0,1]) | model (the model's mean/std)
    # | zero_center (minus the train per-channel mean, VGG) | per_image (minus each image's own mean, AlexNet)
    # | zca | pca (whitening fitted on train, stored in the run folder as preprocess.safetensors)
    mean: list[float] | None = None  # resolved per channel, in [0,1] units
    std: list[float] | None = None
    whiten_eps: float = 0.01  # added to the covariance eigenvalues before whitening ([0,1] pixel units)
    cache: bool = True  # decoded-image cache for folder/zip/csv data (CNNLAB_CACHE_DIR, default ~/.cache/cnnlab)
    workers: int = 2  # DataLoader worker processes when streaming (data over memory_budget_mb)
    max_image_pixels: int = 400_000_000  # larger images are skipped (decompression-bomb limit)


@dataclass
class AugmentConfig:
    """Training-time augmentation (cnnlab.data.augment). A preset fills every option; set options override it."""

    preset: str = "none"  # none | light | medium | heavy
    hflip: float | None = None  # probability of a horizontal flip
    vflip: float | None = None
    rotate: float | None = None  # max degrees, +-
    translate: float | None = None  # max shift, fraction of the side
    scale: float | None = None  # max zoom in/out, e.g. 0.1 -> 0.9..1.1
    crop_scale: float | None = None  # random resized crop: min area fraction (1.0 = off)
    color: float | None = None  # brightness / contrast / saturation jitter strength
    erase: float | None = None  # probability of random erasing (cutout)
    noise: float | None = None  # Gaussian noise std in [0,1] pixel units
    jpeg: float | None = None  # probability of JPEG-compression noise
    mixup: float | None = None  # Beta(alpha, alpha) for mixup; 0 = off
    cutmix: float | None = None  # Beta(alpha, alpha) for cutmix; 0 = off
    groups: int = 16  # random parameters drawn per group of a batch (see cnnlab.data.augment)


@dataclass
class ModelConfig:
    name: str = "seed_cnn"
    kwargs: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None  # a local checkpoint to start from
    pretrained: bool = False  # timm/torchvision pretrained weights (downloads; online users)
    skip_head: bool | None = None  # keep a new classifier when loading weights; None: yes for transfer strategies
    allow_partial: bool = False  # load only the tensors of `weights` that fit, report the rest


@dataclass
class TrainConfig:
    epochs: int | str = "auto"  # a number, or auto: about AUTO_STEPS optimizer steps (3 to 30 epochs)
    batch_size: int | str = "auto"  # an int, "full" (batch gradient descent), or auto: 128; 32 when fine-tuning
    optimizer: str = "adam"
    lr: float | None = None  # None: the optimizer's default (adam 3e-3 peak with one-cycle; sgd 0.05)
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    decay_bias_and_norm: bool = False  # weight decay on biases and norm scales too (off: weights only, as Keras)
    schedule: str = "onecycle"  # constant | step | cosine | onecycle
    warmup_epochs: float = 0.0
    step_size: int = 10  # epochs between drops, for the step schedule
    gamma: float = 0.1  # drop factor, for the step schedule
    loss: str = "cross_entropy"  # cross_entropy | bce | mse | mae
    label_smoothing: float = 0.0
    top_k: int = 5
    grad_clip: float | None = None
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:1 | mps
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    eval_batch_size: int = 512
    checkpoint_every_steps: int | None = None  # also save the `last` checkpoint every N steps (resume mid-epoch)
    nan_policy: str = "rollback"  # on a NaN / Inf loss: rollback (last good state, lower lr) | stop
    nan_retries: int = 3  # rollbacks before stopping with advice
    nan_lr_factor: float = 0.5  # learning-rate multiplier at each rollback


@dataclass
class CallbacksConfig:
    monitor: str = "auto"  # auto: val_accuracy when there is a val split, else accuracy
    checkpoint: bool = True  # ModelCheckpoint: best weights on `monitor`
    early_stopping: int | None = None  # patience in epochs; None: off
    restore_best: bool = True  # EarlyStopping(restore_best_weights=...)
    reduce_lr: int | None = None  # ReduceLROnPlateau patience; None: off
    reduce_lr_factor: float = 0.1
    min_lr: float = 0.0
    target: float | None = None  # stop once `monitor` reaches this value
    csv: bool = True
    tensorboard: bool = True


@dataclass
class BalanceConfig:
    """Imbalanced data (cnnlab/data/balance.py): treatments and their settings."""

    methods: list[str] = field(default_factory=list)  # oversample, undersample, class_weights, focal, smote,
    #   borderline_smote, adasyn, threshold; e.g. --balance oversample,threshold
    class_weights: str = "inverse"  # with class_weights: inverse | effective (effective number of samples)
    beta: float = 0.999  # effective-number beta
    weights: list[float] | None = None  # resolved per-class loss weights (or given by hand)
    focal_gamma: float = 2.0
    focal_alpha: float | None = None  # two classes: the weight of class 1 (class 0 gets 1 - alpha)
    smote_k: int = 5  # neighbours for smote / borderline_smote / adasyn
    epoch_samples: int | None = None  # oversample: draws per epoch (default N); undersample: per class (default min)
    allow_double: bool = False  # apply a sampler / SMOTE together with class weights (double correction)


@dataclass
class TransferConfig:
    """Transfer learning from `model.weights` / `model.pretrained` (cnnlab.transfer)."""

    strategy: str = "none"  # none | feature-extract | fine-tune | full | auto
    unfreeze: int = 4  # fine-tune: blocks (from group_matcher) trained besides the head
    head: str = "linear"  # linear | mlp | logreg (scikit-learn, feature-extract only)
    head_hidden: int = 256  # mlp head width
    head_dropout: float = 0.2  # dropout before each mlp layer
    lr_decay: float = 0.7  # discriminative LRs: lr * lr_decay ** (groups between a block and the head)
    gradual: bool = False  # unfreeze one more group per epoch, head first
    freeze_bn: str = "auto"  # auto (frozen groups; all when batch < 16) | true (all) | false (only frozen groups)
    views: int = 1  # feature-extract: 1 = the eval transform; K > 1 adds K-1 flipped/shifted views per image
    cache: bool = True  # feature-extract: cache bottleneck features on disk (CNNLAB_CACHE_DIR)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    callbacks: CallbacksConfig = field(default_factory=CallbacksConfig)
    balance: BalanceConfig = field(default_factory=BalanceConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)
    out: str | None = None
    verbose: int = 1  # as Keras: 0 silent, 1 progress bar and epoch lines, 2 epoch lines only (--quiet)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _section_types(section: Any) -> dict[str, Any]:
    return typing.get_type_hints(type(section))


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Convert `value` (often a string from the command line) to the field's type."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except (ValueError, TypeError, CnnlabError) as e:
                errors.append(str(e))
        raise CnnlabError(f"{where}: cannot use {value!r} ({'; '.join(errors)})")
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        raise CnnlabError(f"{where}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise CnnlabError(f"{where}: expected a whole number, got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise CnnlabError(f"{where}: expected a whole number, got {value!r}") from None
    if hint is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise CnnlabError(f"{where}: expected a number, got {value!r}") from None
    if hint is str:
        if isinstance(value, (dict, list)):
            raise CnnlabError(f"{where}: expected text, got {value!r}")
        return str(value)
    if origin is list:
        if isinstance(value, str):
            value = yaml.safe_load(value)
            if isinstance(value, str):  # a,b,c
                value = [v.strip() for v in value.split(",") if v.strip()]
            elif value is None:
                value = []
        return [_coerce(v, args[0], where) for v in value]
    if origin is dict:
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, dict):
            raise CnnlabError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    return value


def set_value(cfg: Config, dotted: str, value: Any) -> None:
    """Set `section.key` (or a top-level key) to `value`, converting it to the field's type."""
    parts = dotted.split(".")
    target: Any = cfg
    for part in parts[:-1]:
        if not dataclasses.is_dataclass(target) or not hasattr(target, part):
            raise CnnlabError(f"unknown config section '{part}' in '{dotted}': sections are "
                              f"{', '.join(f.name for f in dataclasses.fields(Config))}")
        target = getattr(target, part)
    key = parts[-1]
    names = [f.name for f in dataclasses.fields(target)]
    if key not in names:
        raise CnnlabError(f"unknown config key '{dotted}': {'.'.join(parts[:-1]) or 'top level'} has "
                          f"{', '.join(names)}")
    hint = _section_types(target)[key]
    if dataclasses.is_dataclass(getattr(target, key)):
        if not isinstance(value, dict):
            raise CnnlabError(f"config section '{dotted}' must be a mapping")
        for k, v in value.items():
            set_value(cfg, f"{dotted}.{k}", v)
        return
    setattr(target, key, _coerce(value, hint, dotted))


def apply_overrides(cfg: Config, overrides: list[str]) -> None:
    """Apply `section.key=value` strings (values parsed as YAML scalars: 3e-4, true, [1, 2])."""
    for item in overrides:
        if "=" not in item:
            raise CnnlabError(f"--set expects section.key=value, got '{item}' (e.g. --set train.lr=3e-4)")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            value = raw
        set_value(cfg, key.strip(), value)


def merge_dict(cfg: Config, data: dict[str, Any], origin: str = "config") -> None:
    """Apply a nested mapping (a parsed config.yaml) onto `cfg`."""
    for key, value in data.items():
        if key in ("meta", "resolved"):  # written by cnnlab for the record; not settings
            continue
        set_value(cfg, key, value)


def load_config(path: str | Path, base: Config | None = None) -> Config:
    """Read a YAML config (yaml.safe_load) onto `base` (default: the defaults)."""
    path = Path(path)
    if not path.is_file():
        raise CnnlabError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise CnnlabError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise CnnlabError(f"{path} must hold a mapping of sections (data:, model:, train:, ...)")
    cfg = base or Config()
    merge_dict(cfg, data, str(path))
    return cfg


def config_from_dict(data: dict[str, Any]) -> Config:
    cfg = Config()
    merge_dict(cfg, data)
    return cfg


def save_config(cfg: Config, path: str | Path, extra: dict[str, Any] | None = None) -> None:
    data = cfg.to_dict()
    if extra:
        data.update(extra)
    Path(path).write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
