"""The one protocol every evaluation task follows: items -> prompts -> generation options -> score.

A task is a small object built by :func:`get_task`. It knows its data (read from local files;
nothing is downloaded), how to turn an item into a prompt, which generation settings the task
needs, and how to score what the model produced. It knows nothing of models, modes or ranks:
:mod:`adaptive_dllm.evaluation.runner` runs every mode x select over the same items, shards them
over torchrun ranks and resumes from its JSONL file.

Two kinds of task:

* ``"generate"``: the runner generates ``n`` completions per item (``--samples``), cuts each at
  the first of :attr:`Task.stop` and calls ``score(item, completions)``.
* ``"loglikelihood"``: the runner estimates ``log p(choice | prompt)`` for every entry of
  ``item.choices`` (Monte-Carlo masked estimator) and calls ``score(item, loglikelihoods)``.

``score`` returns a flat dict of JSON numbers/bools; ``"correct"`` (a float in [0, 1]: for
several samples the fraction that passed, i.e. the per-item pass@1 estimate) is always present,
and tasks add their own metrics (``"strict"``/``"flexible"`` for GSM8K, ``"passed"`` and ``"n"``
for HumanEval, ...). Accuracy in reports is the mean of ``"correct"`` over items.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from adaptive_dllm.errors import AdllmError

__all__ = ["TASKS", "Task", "TaskItem", "TaskKind", "check_task_options", "get_task"]

TaskKind = Literal["generate", "loglikelihood"]


@dataclass(frozen=True)
class TaskItem:
    """One evaluation item.

    Attributes:
        id: stable and unique within the task (e.g. ``"gsm8k/17"``); resuming and sharding key.
        prompt: the full prompt text (few-shot examples included), before any chat template.
        target: the gold answer as text (for multiple choice: the index of the right choice).
        choices: candidate continuations (``"loglikelihood"`` tasks only).
        meta: JSON-serialisable extras reported per item (needle depth, length, source, ...).
    """

    id: str
    prompt: str
    target: str
    choices: tuple[str, ...] = ()
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.id:
            raise AdllmError("a task item needs a non-empty id")


@runtime_checkable
class Task(Protocol):
    """What the runner needs from a task."""

    name: str
    kind: TaskKind
    stop: tuple[str, ...]  # generation is cut at the first of these (generate tasks)

    def items(self, *, limit: int | None = None) -> list[TaskItem]:
        """The task's items in a fixed order (the first ``limit`` of them)."""
        ...

    def generation_defaults(self) -> dict[str, Any]:
        """Sampler options the task needs (e.g. ``gen_length``, ``block_length``, ``steps``);
        the user's explicit options override them."""
        ...

    def score(self, item: TaskItem, outputs: Sequence[str] | Sequence[float]) -> dict[str, Any]:
        """Metrics of one item: completions (generate) or per-choice log-likelihoods."""
        ...

    def settings(self) -> dict[str, Any]:
        """JSON description of everything that changes the items or scores (data file and its
        hash, shots, seed, length ...); a resumed run refuses to continue if it differs."""
        ...


# Every task, by name: the module under ``adaptive_dllm.evaluation.tasks`` and its factory
# ``make_task(**options) -> Task``. Imported on first use, so importing this protocol is cheap.
# Adding a task = a module with ``make_task`` and one line here.
TASKS: dict[str, str] = {
    "gsm8k": "gsm8k",
    "humaneval": "humaneval",
    "choice": "choice",
    "retrieval": "retrieval",
}


def _factory(name: str) -> Any:
    if name not in TASKS:
        raise AdllmError(f"unknown task {name!r}; choose one of {', '.join(sorted(TASKS))}")
    return importlib.import_module(f"adaptive_dllm.evaluation.tasks.{TASKS[name]}").make_task


def check_task_options(name: str, options: Mapping[str, Any]) -> None:
    """Refuse options that task ``name`` does not take (before a model is loaded).

    Raises:
        AdllmError: an unknown task, or an option it does not take (the message lists its own).
    """
    params = inspect.signature(_factory(name)).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    known = [k for k in params if k != "tokenizer"]
    for key in options:
        if key not in params:
            raise AdllmError(f"task {name!r} has no option {key!r}; its options are "
                             f"{', '.join(known)}")


def get_task(name: str, **options: Any) -> Task:
    """The task ``name`` built with ``options`` (``tokenizer=``, ``data=``, ``shots=``, ``seed=``
    and task-specific ones).

    Raises:
        AdllmError: an unknown task name (the message lists the known ones) or an option the
            task does not take.
    """
    check_task_options(name, options)
    return _factory(name)(**options)
