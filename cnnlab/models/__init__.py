"""Models: the registry, `create_model`, and the architectures.

The architecture modules register their models when imported; `MODELS` imports them on first use and reads their
names from the source before that (cnnlab.registry), so listing models needs no torch.
"""

from cnnlab.models.registry import MODELS, create_model, list_models, register_model

__all__ = ["MODELS", "create_model", "list_models", "register_model"]
