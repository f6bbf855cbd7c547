"""cnnlab: train, evaluate and understand convolutional image classifiers."""

from cnnlab.errors import CnnlabError
from cnnlab.models import create_model, list_models, register_model
from cnnlab.models.summary import summary

__version__ = "0.1.0"

__all__ = ["CnnlabError", "create_model", "list_models", "register_model", "summary", "__version__"]
