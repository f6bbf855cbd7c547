"""Loading third-party checkpoints (`--weights FILE`) into a model, safely and loudly.

Owns `load_weights` and `read_state_dict`. Files are .pth/.pt/.th/.tar/.bin (torch.save, read ALWAYS with
`weights_only=True`: a pickle that would run code is refused) or .safetensors. The state dict is unwrapped
from `state_dict` / `model` / `net` entries, `module.` (DataParallel) and `_orig_mod.` (torch.compile)
prefixes are stripped, and a classifier saved under another common name (fc, linear, classifier, head) is
mapped onto the model's. Missing, unexpected and mis-shaped keys are reported; a partial load is refused
unless asked for (`allow_partial=True`), and `skip_head=True` keeps the model's own new classifier
(transfer learning to another number of classes).
"""

from __future__ import annotations

import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from cnnlab.errors import CnnlabError

WEIGHT_SUFFIXES = (".pth", ".pt", ".th", ".tar", ".bin", ".ckpt", ".safetensors")
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "module", "params")
_PREFIXES = ("module.", "_orig_mod.")
_HEAD_NAMES = re.compile(r"^(fc|linear|classifier|head|last_linear|logits)(\.[\w.]+)?\.weight$")


@dataclass
class LoadReport:
    """What `load_weights` did: keys loaded, and those missing / unexpected / mis-shaped / skipped."""

    path: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)  # "key: checkpoint (a, b) vs model (c, d)"
    skipped_head: list[str] = field(default_factory=list)
    renamed: dict[str, str] = field(default_factory=dict)
    adapted: list[str] = field(default_factory=list)  # input convs whose channels were adapted (e.g. RGB -> gray)

    @property
    def complete(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        return "\n".join([f"loaded {len(self.loaded)} tensors from {self.path}", *self.problems()])

    def problems(self) -> list[str]:
        """One line per kind of key that was renamed, skipped, missing, unexpected or mis-shaped."""
        lines = []
        if self.renamed:
            lines.append("renamed: " + ", ".join(f"{a} -> {b}" for a, b in self.renamed.items()))
        for label, keys in (
            ("input channels adapted", self.adapted),
            ("skipped (new classifier)", self.skipped_head),
            ("missing in file", self.missing),
            ("unexpected in file", self.unexpected),
            ("mis-shaped", self.mismatched),
        ):
            if keys:
                lines.append(f"{label} ({len(keys)}): {_short_list(keys)}")
        return lines


def _short_list(keys: list[str], limit: int = 8) -> str:
    more = f", ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def _torch_load(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise CnnlabError(
            f"refused to load {path}: it holds Python objects other than tensors, which could run code when "
            f"unpickled ({first}). Re-save only the state dict (torch.save(model.state_dict(), f)) or use "
            ".safetensors"
        ) from None
    except (RuntimeError, EOFError, OSError) as e:
        raise CnnlabError(f"could not read {path} as a PyTorch checkpoint: {str(e).splitlines()[0][:200]}") from None


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint file into a flat {name: tensor} dict (unwrapped, prefixes stripped)."""
    path = Path(path)
    if not path.is_file():
        raise CnnlabError(f"weights file not found: {path}")
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        try:
            obj: object = load_file(str(path), device="cpu")
        except Exception as e:  # safetensors raises its own SafetensorError
            raise CnnlabError(f"could not read {path} as safetensors: {e}") from None
    else:
        obj = _torch_load(path)
    for _ in range(3):  # {"state_dict": {...}}, {"model": {"state_dict": ...}}, ...
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj, dict) and isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, dict):
        raise CnnlabError(f"{path} holds a {type(obj).__name__}, not a state dict of tensors")
    state = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise CnnlabError(f"{path} has no tensors (top-level keys: {_short_list([str(k) for k in obj])})")
    return {_strip(k): v for k, v in state.items()}


def _strip(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for p in _PREFIXES:
            if key.startswith(p):
                key, changed = key[len(p) :], True
    return key


def classifier_prefix(model: nn.Module) -> str | None:
    """The module path of the model's classifier (e.g. 'fc', 'linear', 'head.9'), if it has one."""
    get = getattr(model, "get_classifier", None)
    if get is None:
        return None
    clf = get()
    return next((name for name, m in model.named_modules() if m is clf and name), None)


def _map_head(
    state: dict[str, torch.Tensor],
    model_keys: dict[str, torch.Tensor],
    prefix: str | None,
    report: LoadReport,
) -> dict[str, torch.Tensor]:
    """Rename a checkpoint's classifier (fc/linear/classifier/head...) onto the model's when names differ."""
    if prefix is None or f"{prefix}.weight" in state or f"{prefix}.weight" not in model_keys:
        return state
    want_in = model_keys[f"{prefix}.weight"].shape[1] if model_keys[f"{prefix}.weight"].dim() == 2 else None
    candidates = [k for k in state if _HEAD_NAMES.match(k) and k not in model_keys and state[k].dim() == 2]
    fitting = [k for k in candidates if state[k].shape[1] == want_in] or candidates
    if not fitting:
        return state
    src = fitting[-1][: -len(".weight")]
    state = dict(state)
    for suffix in (".weight", ".bias"):
        if src + suffix in state:
            state[prefix + suffix] = state.pop(src + suffix)
            report.renamed[src + suffix] = prefix + suffix
    return state


def _other_in_chans(file_w: torch.Tensor, model_w: torch.Tensor) -> bool:
    """Same conv but for its number of input channels (a 3-channel checkpoint on grayscale data, or back)."""
    return file_w.dim() == 4 and file_w.shape[1] != model_w.shape[1] and (
        file_w.shape[0], *file_w.shape[2:]) == (model_w.shape[0], *model_w.shape[2:])


def _adapt_input_conv(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """timm's rule (timm.models.adapt_input_conv): 1 channel sums the RGB filters; more channels repeat them,
    scaled so that the activation's size is unchanged."""
    from timm.models import adapt_input_conv  # imported only here: importing timm costs about a second

    return adapt_input_conv(in_chans, weight)


def _matching_tensors(state: dict, model_state: dict, report: LoadReport) -> dict:
    """The tensors of `state` that fit the model (the stem conv adapted to other input channels); the rest is
    reported as unexpected or mis-shaped."""
    to_load = {}
    stem = next((k for k, v in model_state.items() if v.dim() == 4), None)  # the first conv sees the image
    for key, value in state.items():
        if key not in model_state:
            report.unexpected.append(key)
        elif key == stem and _other_in_chans(value, model_state[key]):
            to_load[key] = _adapt_input_conv(value, model_state[key].shape[1])
            report.adapted.append(f"{key}: {value.shape[1]} -> {model_state[key].shape[1]} channels")
        elif model_state[key].shape != value.shape:
            report.mismatched.append(f"{key}: file {tuple(value.shape)} vs model {tuple(model_state[key].shape)}")
        else:
            to_load[key] = value
    return to_load


def load_weights(
    model: nn.Module,
    path: str | Path,
    strict: bool = True,
    allow_partial: bool = False,
    skip_head: bool = False,
) -> LoadReport:
    """Load a checkpoint file into `model` and report what matched.

    Args:
        model: the network to fill (in place).
        path: .pth/.pt/.th/.tar/.bin/.ckpt (torch.save; read with weights_only=True) or .safetensors.
        strict: refuse missing or unexpected keys (mis-shaped keys are refused whenever allow_partial is off).
        allow_partial: load whatever matches in name and shape and report the rest instead of refusing.
        skip_head: never load the classifier (keep the model's fresh one, e.g. 2 classes instead of 1000).

    Returns:
        a LoadReport; `str(report)` is a readable account.

    Raises:
        CnnlabError: unreadable or unsafe file, or a partial load that was not asked for.
    """
    report = LoadReport(str(path))
    state = read_state_dict(path)
    model_state = model.state_dict()
    prefix = classifier_prefix(model)
    state = _map_head(state, model_state, prefix, report)
    head_keys = {k for k in model_state if prefix and k.startswith(prefix + ".")}
    if skip_head:
        report.skipped_head = sorted(k for k in state if k in head_keys)
        state = {k: v for k, v in state.items() if k not in head_keys}
    to_load = _matching_tensors(state, model_state, report)
    # old checkpoints predate BatchNorm's num_batches_tracked; a missing counter is harmless
    report.missing = [
        k
        for k in model_state
        if k not in state and not k.endswith("num_batches_tracked") and not (skip_head and k in head_keys)
    ]
    report.loaded = sorted(to_load)
    refuse = report.mismatched or (strict and (report.missing or report.unexpected))
    if refuse and not allow_partial:
        hint = ""
        if report.mismatched and any(k.split(":")[0] in head_keys for k in report.mismatched):
            hint = " The classifier differs in size: pass skip_head=True (--skip-head) to keep a new one."
        raise CnnlabError(
            f"weights in {path} do not fit this model; nothing was loaded.\n"
            + "\n".join(report.problems())
            + "\nCheck the model name and options (e.g. width, shortcut, activation) or pass "
            f"allow_partial=True (--allow-partial) to load only the matching tensors.{hint}"
        )
    model.load_state_dict(to_load, strict=False)
    return report
