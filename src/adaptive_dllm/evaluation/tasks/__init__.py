"""Evaluation tasks: GSM8K, HumanEval, multiple choice and RULER-style retrieval.

See :mod:`adaptive_dllm.evaluation.tasks.base` for the protocol every task follows.
"""

from adaptive_dllm.evaluation.tasks.base import TASKS, Task, TaskItem, TaskKind, get_task

__all__ = ["TASKS", "Task", "TaskItem", "TaskKind", "get_task"]
