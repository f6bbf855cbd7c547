"""cnnlab: train, evaluate and understand convolutional image classifiers."""

__version__ = "0.1.0"

from cnnlab.api import Run, evaluate, fit, load_run, predict  # noqa: E402
from cnnlab.config import Config, load_config  # noqa: E402
from cnnlab.errors import CnnlabError  # noqa: E402
from cnnlab.models import create_model, list_models, register_model  # noqa: E402
from cnnlab.models.summary import summary  # noqa: E402
from cnnlab.resume import resume  # noqa: E402
from cnnlab.train.callbacks import (  # noqa: E402
    Callback,
    CSVLogger,
    EarlyStopping,
    ModelCheckpoint,
    ReduceLROnPlateau,
    StopOnTarget,
    TensorBoard,
)

__all__ = [
    "Callback", "CSVLogger", "CnnlabError", "Config", "EarlyStopping", "ModelCheckpoint", "ReduceLROnPlateau",
    "Run", "StopOnTarget", "TensorBoard", "__version__", "create_model", "evaluate", "fit", "list_models",
    "load_config", "load_run", "predict", "register_model", "resume", "summary",
]
