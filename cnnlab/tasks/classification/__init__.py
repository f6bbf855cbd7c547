"""The classification task (one class per image): task, metrics, and its evaluation and export outputs."""

from cnnlab.tasks.classification.task import (
    ClassificationTask,
    classification_task,
    main_output,
    predicted_classes,
)

__all__ = ["ClassificationTask", "classification_task", "main_output", "predicted_classes"]
