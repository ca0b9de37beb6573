"""Multiple choice by log-likelihood (MMLU, ARC and the like) from a local file; nothing shipped.

Data: a CSV in MMLU's column layout (``question, A, B, C, D, answer``; any number >= 2 of choice
columns; the answer a letter; an optional header row) or JSONL
``{"question", "choices": [...], "answer": index or letter}``
(:func:`adaptive_dllm.datafiles.read_choice`). ``data`` is required.

Prompt (lm-eval's ``mmlu`` layout)::

    {question}
    A. {choice A}
    B. {choice B}
    ...
    Answer:

preceded by ``shots`` solved examples (the same block with `` {letter}`` appended, separated by
blank lines). With ``format="letters"`` (default, MMLU) the candidate continuations are the
letters `` A``, `` B``, ...; with ``format="texts"`` (ARC, HellaSwag style) the prompt lists no
choices (``"{question}\\nAnswer:"``) and the candidates are the choice texts themselves.

Few-shot examples come from ``fewshot_data`` (e.g. MMLU's dev split) or, when that is not
given, from the other questions of ``data``; drawn per item from ``(seed, item index)``, never
the item itself.

The runner estimates ``log p(candidate | prompt)`` for every candidate with the Monte-Carlo
estimator (:mod:`adaptive_dllm.evaluation.loglik`) and calls :meth:`ChoiceTask.score`:
``correct`` is 1 when the highest estimate is the right choice, ``correct_norm`` the same with
estimates divided by the candidate's length in characters (lm-eval's ``acc_norm``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from adaptive_dllm.datafiles import LETTERS, ChoiceQuestion, choice_prompt, read_choice
from adaptive_dllm.errors import AdllmError
from adaptive_dllm.evaluation.tasks._common import (
    check_count,
    check_limit,
    draw_shots,
    file_digest,
    item_rng,
)
from adaptive_dllm.evaluation.tasks.base import TaskItem

__all__ = ["ChoiceTask", "make_task"]

ChoiceFormat = Literal["letters", "texts"]
FORMATS: tuple[str, ...] = ("letters", "texts")


@dataclass(frozen=True)
class ChoiceTask:
    """The multiple-choice task (module docstring). Build it with :func:`make_task`."""

    data: Path
    fewshot_data: Path | None = None
    shots: int = 0
    seed: int = 0
    format: ChoiceFormat = "letters"
    mc_num: int = 128
    name: str = "choice"
    kind: Literal["loglikelihood"] = "loglikelihood"
    stop: tuple[str, ...] = ()
    _questions: tuple[ChoiceQuestion, ...] = field(default=(), repr=False, compare=False)
    _pool: tuple[ChoiceQuestion, ...] = field(default=(), repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise AdllmError(f"choice format {self.format!r} must be one of {', '.join(FORMATS)}")
        check_count("shots", self.shots, minimum=0)
        check_count("seed", self.seed, minimum=0)
        check_count("mc_num", self.mc_num, minimum=1)
        questions = tuple(read_choice(self.data))
        pool = questions if self.fewshot_data is None else tuple(read_choice(self.fewshot_data))
        if self.shots and len(pool) <= self.shots:
            raise AdllmError(f"{self.shots} shots need more than {self.shots} few-shot questions; "
                             f"{self.fewshot_data or self.data} has {len(pool)}")
        object.__setattr__(self, "_questions", questions)
        object.__setattr__(self, "_pool", pool)

    def _block(self, q: ChoiceQuestion) -> str:
        if self.format == "texts":
            return f"{q.question.strip()}\nAnswer:"
        return choice_prompt(q)

    def candidates(self, q: ChoiceQuestion) -> tuple[str, ...]:
        """The continuations scored for ``q`` (each with its leading space)."""
        if self.format == "texts":
            return tuple(f" {c.strip()}" for c in q.choices)
        return tuple(f" {LETTERS[i]}" for i in range(len(q.choices)))

    def prompt(self, index: int) -> str:
        q = self._questions[index]
        shots = draw_shots(self._pool, q.question, lambda s: s.question, self.shots,
                           item_rng(self.seed, "choice", index))
        solved = [self._block(s) + self.candidates(s)[s.answer] for s in shots]
        return "\n\n".join([*solved, self._block(q)])

    def items(self, *, limit: int | None = None) -> list[TaskItem]:
        n = len(self._questions) if check_limit(limit) is None else min(limit, len(self._questions))
        return [TaskItem(id=f"choice/{i}", prompt=self.prompt(i), target=str(q.answer),
                         choices=self.candidates(q), meta={"line": q.line})
                for i, q in enumerate(self._questions[:n])]

    def generation_defaults(self) -> dict[str, Any]:
        # Options of the log-likelihood estimator (nothing is generated).
        return {"mc_num": self.mc_num}

    def score(self, item: TaskItem, outputs: Sequence[str] | Sequence[float]) -> dict[str, Any]:
        """``correct`` / ``correct_norm`` (module docstring) and ``pred``, the chosen index."""
        if len(outputs) != len(item.choices) or not all(
                isinstance(o, (int, float)) and not isinstance(o, bool) and math.isfinite(o)
                for o in outputs):
            raise AdllmError(f"{item.id}: give one finite log-likelihood per choice "
                             f"({len(item.choices)}), got {list(outputs)[:8]!r}")
        values = [float(o) for o in outputs]
        pred = max(range(len(values)), key=values.__getitem__)
        norm = [v / max(1, len(c)) for v, c in zip(values, item.choices, strict=True)]
        pred_norm = max(range(len(norm)), key=norm.__getitem__)
        gold = int(item.target)
        return {"correct": float(pred == gold), "correct_norm": float(pred_norm == gold), "pred": pred}

    def settings(self) -> dict[str, Any]:
        few = self.fewshot_data
        return {"task": self.name, "data": self.data.name, "data_sha256_16": file_digest(self.data),
                "fewshot_data": None if few is None else few.name,
                "fewshot_sha256_16": None if few is None else file_digest(few), "shots": self.shots,
                "seed": self.seed, "format": self.format, "mc_num": self.mc_num}


def make_task(
    *,
    tokenizer: Any = None,
    data: str | Path | None = None,
    shots: int | None = None,
    seed: int = 0,
    fewshot_data: str | Path | None = None,
    format: ChoiceFormat = "letters",
    mc_num: int = 128,
) -> ChoiceTask:
    """The multiple-choice task.

    Args:
        tokenizer: unused (prompts are text); accepted so every task takes the same options.
        data: the questions, CSV (MMLU layout) or JSONL; required.
        shots: solved examples before each question (default 0).
        seed: few-shot seed.
        fewshot_data: where the solved examples come from (default: the other questions).
        format: ``letters`` (score `` A``/`` B``...) or ``texts`` (score the choice texts).
        mc_num: Monte-Carlo samples of the log-likelihood estimator (LLaDA's harness: 128).

    Raises:
        AdllmError: no or missing data file, malformed rows, bad options.
    """
    del tokenizer
    if data is None:
        raise AdllmError("the choice task ships no data; pass --data FILE (.csv in MMLU's layout "
                         "or .jsonl with question/choices/answer)")
    return ChoiceTask(data=Path(data).expanduser(),
                      fewshot_data=None if fewshot_data is None else Path(fewshot_data).expanduser(),
                      shots=0 if shots is None else shots, seed=seed, format=format, mc_num=mc_num)
