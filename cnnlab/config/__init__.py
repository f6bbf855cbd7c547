"""Run configuration: the table of options (schema), per-field metadata (options), building and YAML (files).

    cfg = build_config("digits", model="lenet5", overrides=["train.lr=3e-4"])   # validated, no torch needed
"""

from cnnlab.config.files import (
    apply_keywords,
    apply_overrides,
    build_config,
    check_model_name,
    config_from_dict,
    config_to_yaml,
    fields,
    load_config,
    merge_dict,
    read_yaml,
    validate,
)
from cnnlab.config.options import Field, Option, set_value
from cnnlab.config.schema import (
    AugmentConfig,
    BalanceConfig,
    CallbacksConfig,
    Config,
    DataConfig,
    ModelConfig,
    TrainConfig,
    TransferConfig,
)

__all__ = [
    "AugmentConfig", "BalanceConfig", "CallbacksConfig", "Config", "DataConfig", "Field", "ModelConfig", "Option",
    "TrainConfig", "TransferConfig", "apply_keywords", "apply_overrides", "build_config", "check_model_name",
    "config_from_dict", "config_to_yaml", "fields", "load_config", "merge_dict", "read_yaml", "set_value",
    "validate",
]
