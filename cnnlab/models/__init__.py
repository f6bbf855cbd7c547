"""Models: the registry, `create_model`, and the architectures (importing a module registers its models)."""

from cnnlab.models import seed  # noqa: F401  (registers seed_cnn, lenet5, mlp)
from cnnlab.models.registry import MODELS, create_model, list_models, register_model

__all__ = ["MODELS", "create_model", "list_models", "register_model"]
