"""Does a task fit the model's context? Checked before any generation, and few-shot prompts
shortened to fit when the user did not ask for a number of shots.

A task evaluation that fails on item 300 because its prompt plus the generated tokens exceed
the model's maximum length wastes the 299 items before it; :func:`check_context` measures every
prompt up front (tokenised exactly as generation will tokenise it, chat template included) and
names the longest one and the fix. :func:`fit_shots` serves the default of a few-shot task
(GSM8K's five exemplars, lm-eval's default) on small models: the bundled model has a 1,024-token
context, which five GSM8K exemplars alone overflow, so the CLI drops to the largest number of
shots that fits and says so.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from adaptive_dllm.errors import AdllmError
from adaptive_dllm.evaluation.tasks.base import Task, TaskItem
from adaptive_dllm.generation.prompts import prompt_ids

__all__ = ["check_context", "fit_shots", "longest_prompt", "prompt_tokens"]


def prompt_tokens(tokenizer: Any, prompt: str, *, chat: bool) -> int:
    """Tokens of ``prompt`` as generation encodes it (one user turn when ``chat``)."""
    return len(prompt_ids(tokenizer, prompt, chat=chat))


def longest_prompt(tokenizer: Any, items: Sequence[TaskItem], *,
                   chat: bool) -> tuple[int, TaskItem | None]:
    """(tokens, item) of the longest prompt of ``items``; (0, None) when there are none."""
    best: tuple[int, TaskItem | None] = (0, None)
    for item in items:
        n = prompt_tokens(tokenizer, item.prompt, chat=chat)
        if n > best[0]:
            best = (n, item)
    return best


def _fix(task: Task, room: int) -> str:
    """What the user can change, from the task's own settings."""
    settings = task.settings()
    fixes = []
    if isinstance(settings.get("length"), int):
        fixes.append(f"a --length of at most {max(room, 0)}")
    if settings.get("shots"):
        fixes.append("fewer --shots")
    return " or ".join([*fixes, "a smaller --gen-length"])


def check_context(task: Task, items: Sequence[TaskItem], tokenizer: Any, *, max_len: int,
                  gen_length: int, chat: bool) -> None:
    """Refuse a generate task whose longest prompt + ``gen_length`` exceeds ``max_len``.

    Raises:
        AdllmError: naming the item, its length and what to lower.
    """
    if task.kind != "generate":
        return  # the log-likelihood estimator checks prefix + continuation itself
    n, item = longest_prompt(tokenizer, items, chat=chat)
    if item is not None and n + gen_length > max_len:
        raise AdllmError(f"task {task.name!r}: prompt of item {item.id!r} is {n} tokens + "
                         f"gen_length {gen_length} = {n + gen_length}, over the model maximum "
                         f"of {max_len} tokens; use {_fix(task, max_len - gen_length)}")


def fit_shots(build: Callable[[int], Task], shots: int, tokenizer: Any, *, limit: int | None,
              max_len: int, gen_length: int, chat: bool) -> Task:
    """The task with the most shots in [0, ``shots``] whose first ``limit`` prompts fit
    ``max_len`` with ``gen_length`` generated tokens; ``build(k)`` makes the k-shot task.
    When none fits, the 0-shot task (and :func:`check_context` then names the problem)."""
    for k in range(shots, -1, -1):
        task = build(k)
        n, _ = longest_prompt(tokenizer, task.items(limit=limit), chat=chat)
        if n + gen_length <= max_len:
            return task
    return task
