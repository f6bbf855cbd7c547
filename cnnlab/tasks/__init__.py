"""Tasks: what a kind of target means to the training loop (cnnlab.tasks.base). `classify` is the first one;
where to add another is in docs/architecture.md."""

from cnnlab.tasks.base import DATA_STEPS, TASKS, Metric, MetricSet, Task, create_task, register_task

__all__ = ["DATA_STEPS", "TASKS", "Metric", "MetricSet", "Task", "create_task", "register_task"]
