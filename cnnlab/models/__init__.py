"""Models: the registry, `create_model`, and the architectures (importing a module registers its models)."""

# importing a module registers its models: seed (seed_cnn, lenet5, mlp) and the zoo
from cnnlab.models import classic, densenet, mobilenet, resnet, seed, selu  # noqa: F401
from cnnlab.models.registry import MODELS, create_model, list_models, register_model

__all__ = ["MODELS", "create_model", "list_models", "register_model"]
