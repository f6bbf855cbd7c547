"""cnnlab: train, evaluate and understand convolutional image classifiers.

The public API is imported on first use (PEP 562), so `import cnnlab` and `cnnlab --help` / `--version` do not
pay for importing torch (about 1.5 s).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "fit": "cnnlab.api", "resume": "cnnlab.api", "compute_features": "cnnlab.api",
    "Run": "cnnlab.inference", "load_run": "cnnlab.inference", "evaluate": "cnnlab.inference",
    "predict": "cnnlab.inference", "Predictor": "cnnlab.train.predictor",
    "RunDir": "cnnlab.runs", "export_run": "cnnlab.export", "doctor": "cnnlab.doctor",
    "Config": "cnnlab.config", "load_config": "cnnlab.config",
    "CnnlabError": "cnnlab.errors",
    "Task": "cnnlab.tasks", "Metric": "cnnlab.tasks", "MetricSet": "cnnlab.tasks", "register_task": "cnnlab.tasks",
    "create_model": "cnnlab.models", "list_models": "cnnlab.models", "register_model": "cnnlab.models",
    "create_backbone": "cnnlab.models", "feature_extractor": "cnnlab.models",
    "summary": "cnnlab.models.summary",
    "Callback": "cnnlab.train.callbacks", "CSVLogger": "cnnlab.train.callbacks",
    "EarlyStopping": "cnnlab.train.callbacks", "ModelCheckpoint": "cnnlab.train.callbacks",
    "ReduceLROnPlateau": "cnnlab.train.callbacks", "StopOnTarget": "cnnlab.train.callbacks",
    "TensorBoard": "cnnlab.train.callbacks",
}

__all__ = sorted([*_EXPORTS, "__version__"])


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'cnnlab' has no attribute '{name}'")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
