"""Transfer learning: layer groups and freezing (groups), new heads (heads), cached bottleneck features
(features), and the plan of a run: strategy, `auto`, optimizer groups, the transfer.json record (strategy).

Public pieces for other features (e.g. resampling cached features for imbalanced data): `extract_features`,
`load_or_compute_features`, `fit_logreg_head`, `layer_groups`; `cnnlab.compute_features` runs the whole path.
"""

from cnnlab.transfer.features import FeatureSet, extract_features, load_or_compute_features, pooled_features
from cnnlab.transfer.groups import GradualUnfreeze, discriminative_param_groups, layer_groups
from cnnlab.transfer.heads import FeatureTrainer, apply_head, fit_logreg, fit_logreg_head
from cnnlab.transfer.strategy import AUTO_FEW_IMAGES, TransferPlan, choose_strategy, plan_transfer

__all__ = [
    "AUTO_FEW_IMAGES", "FeatureSet", "FeatureTrainer", "GradualUnfreeze", "TransferPlan", "apply_head",
    "choose_strategy", "discriminative_param_groups", "extract_features", "fit_logreg", "fit_logreg_head",
    "layer_groups", "load_or_compute_features", "plan_transfer", "pooled_features",
]
