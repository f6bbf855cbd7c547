"""Models: the registry, `create_model`, the architectures, and their multi-scale feature maps (`create_backbone`).

The architecture modules register their models when imported; `MODELS` imports them on first use and reads their
names from the source before that (cnnlab.registry), so listing models needs no torch. The backbone functions are
imported on first use (PEP 562) for the same reason.
"""

from __future__ import annotations

import importlib
from typing import Any

from cnnlab.models.registry import MODELS, create_model, list_models, register_model

# public name -> the module that defines it, imported when first asked for (it imports torch)
_LAZY = {"create_backbone": "cnnlab.models.backbone", "feature_extractor": "cnnlab.models.backbone",
         "FeatureMaps": "cnnlab.models.backbone"}

__all__ = ["MODELS", "FeatureMaps", "create_backbone", "create_model", "feature_extractor", "list_models",
           "register_model"]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'cnnlab.models' has no attribute '{name}'")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value
