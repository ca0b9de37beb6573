"""GSM8K: grade-school maths word problems, k-shot, scored by lm-eval's two answer rules.

Prompt (lm-eval's ``gsm8k`` task layout): ``shots`` exemplars ``"Question: {q}\\nAnswer: {a}"``
separated by blank lines, then ``"Question: {q}\\nAnswer:"``. Exemplars show the full solution
ending in ``#### N`` (calculator annotations ``<<...>>`` kept, as lm-eval shows them). They are
drawn without replacement from the few-shot pool by a generator seeded with ``(seed, item
index)``, so an item's prompt never depends on ``--limit`` or on how items are sharded; an
exemplar whose question equals the item's is never drawn (no leak when ``data`` is a train file).

Data: the shipped test split (1,319 problems, MIT licence, ``tasks/data``) unless ``data`` names
another GSM8K JSONL file. Few-shot pool: the first 200 problems of the train split, shipped
(``tasks/data/README.md`` says why 200), unless ``fewshot_data`` names another file.

Answer rules (both reported per item, as lm-eval does):

* ``strict``: the first ``#### <number>`` in the completion.
* ``flexible``: the last number anywhere in the completion.

Numbers are compared after normalisation: ``$`` and thousands commas dropped, a trailing full
stop dropped, and the value written canonically (``"1,000.00"``, ``"$1000"`` and ``"1000."`` are
all ``1000``). ``correct`` is the **flexible** rule: it is what diffusion-LM papers (LLaDA,
Dream) report as GSM8K accuracy, and it does not punish a right answer written without
``####``; ``strict`` is reported alongside.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal

from adaptive_dllm.datafiles import read_gsm8k
from adaptive_dllm.errors import AdllmError
from adaptive_dllm.evaluation.tasks._common import (
    DATA_DIR,
    check_count,
    check_limit,
    data_path,
    draw_shots,
    file_digest,
    item_rng,
)
from adaptive_dllm.evaluation.tasks.base import TaskItem

__all__ = ["GSM8K", "extract_answer", "make_task", "normalize_number"]

TEST_FILE = DATA_DIR / "gsm8k_test.jsonl"
FEWSHOT_FILE = DATA_DIR / "gsm8k_train200.jsonl"

# A number as people write it: optional sign and $, digits with optional thousands commas,
# optional decimals ("-$1,234.50", "3", ".5" is not matched; GSM8K answers are never like that).
_NUMBER = r"-?\$?\d[\d,]*(?:\.\d+)?"
_STRICT = re.compile(r"####\s*(" + _NUMBER + ")")
_ANY = re.compile(_NUMBER)


def normalize_number(text: str) -> str | None:
    """Canonical form of a number as written (``"$1,000.00"`` -> ``"1000"``), None if not one."""
    t = text.strip().replace(",", "").replace("$", "").rstrip(".")
    try:
        value = Decimal(t)
    except InvalidOperation:
        return None
    if not value.is_finite():
        return None
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def extract_answer(completion: str, rule: Literal["strict", "flexible"]) -> str | None:
    """The normalised answer of ``completion`` under one rule (module docstring), None if none."""
    if rule == "strict":
        found = _STRICT.search(completion)
        return normalize_number(found.group(1)) if found else None
    if rule == "flexible":
        numbers = _ANY.findall(completion)
        return normalize_number(numbers[-1]) if numbers else None
    raise AdllmError(f"answer rule {rule!r} must be 'strict' or 'flexible'")


def gold_answer(answer: str) -> str:
    """The normalised final answer of a GSM8K solution (the text after ``####``)."""
    gold = normalize_number(answer.rsplit("####", 1)[1])
    if gold is None:
        raise AdllmError(f"GSM8K answer {answer.rsplit('####', 1)[1].strip()!r} is not a number")
    return gold


@dataclass(frozen=True)
class GSM8K:
    """The GSM8K task (module docstring). Build it with :func:`make_task`."""

    data: Path = TEST_FILE
    fewshot_data: Path = FEWSHOT_FILE
    shots: int = 5
    seed: int = 0
    gen_length: int = 256
    name: str = "gsm8k"
    kind: Literal["generate"] = "generate"
    stop: tuple[str, ...] = ("Question:", "</s>", "<|im_end|>", "<|eot_id|>", "<|endoftext|>")
    _problems: tuple[tuple[str, str], ...] = field(default=(), repr=False, compare=False)
    _pool: tuple[tuple[str, str], ...] = field(default=(), repr=False, compare=False)

    def __post_init__(self) -> None:
        check_count("shots", self.shots, minimum=0)
        check_count("seed", self.seed, minimum=0)
        check_count("gen_length", self.gen_length, minimum=1)
        problems = tuple(read_gsm8k(self.data))
        for _question, answer in problems:
            gold_answer(answer)  # every gold answer must be a number before any work starts
        pool = tuple(read_gsm8k(self.fewshot_data)) if self.shots else ()
        if self.shots and len(pool) < self.shots + 1:
            raise AdllmError(f"{self.shots} shots need at least {self.shots + 1} few-shot problems; "
                             f"{self.fewshot_data} has {len(pool)}")
        object.__setattr__(self, "_problems", problems)
        object.__setattr__(self, "_pool", pool)

    def exemplars(self, index: int) -> list[tuple[str, str]]:
        """The few-shot (question, answer) pairs of item ``index`` (seeded by seed and index)."""
        picked = draw_shots(self._pool, self._problems[index][0], lambda pair: pair[0], self.shots,
                            item_rng(self.seed, "gsm8k", index))
        if len(picked) < self.shots:
            raise AdllmError(f"{self.shots} shots: only {len(picked)} few-shot problems differ "
                             f"from item {index}'s question; lower --shots")
        return picked

    def prompt(self, index: int) -> str:
        shots = [f"Question: {q}\nAnswer: {a}" for q, a in self.exemplars(index)]
        return "\n\n".join([*shots, f"Question: {self._problems[index][0]}\nAnswer:"])

    def items(self, *, limit: int | None = None) -> list[TaskItem]:
        n = len(self._problems) if check_limit(limit) is None else min(limit, len(self._problems))
        return [TaskItem(id=f"gsm8k/{i}", prompt=self.prompt(i),
                         target=gold_answer(self._problems[i][1]), meta={"index": i})
                for i in range(n)]

    def generation_defaults(self) -> dict[str, Any]:
        # LLaDA's GSM8K evaluation: 256 new tokens, one per step, semi-autoregressive blocks of 32.
        return {"gen_length": self.gen_length, "steps": self.gen_length, "block_length": 32}

    def score(self, item: TaskItem, outputs: Sequence[str] | Sequence[float]) -> dict[str, Any]:
        """``strict`` and ``flexible``: fraction of completions right under each rule;
        ``correct`` = ``flexible``; ``n`` completions."""
        if not outputs or not all(isinstance(o, str) for o in outputs):
            raise AdllmError(f"{item.id}: GSM8K scores a non-empty list of completion strings")
        strict = sum(extract_answer(str(o), "strict") == item.target for o in outputs) / len(outputs)
        flexible = sum(extract_answer(str(o), "flexible") == item.target for o in outputs) / len(outputs)
        return {"correct": flexible, "strict": strict, "flexible": flexible, "n": len(outputs)}

    def settings(self) -> dict[str, Any]:
        return {"task": self.name, "data": self.data.name, "data_sha256_16": file_digest(self.data),
                "fewshot_data": self.fewshot_data.name,
                "fewshot_sha256_16": file_digest(self.fewshot_data), "shots": self.shots,
                "seed": self.seed, "gen_length": self.gen_length, "correct_rule": "flexible"}


def make_task(
    *,
    tokenizer: Any = None,
    data: str | Path | None = None,
    shots: int | None = None,
    seed: int = 0,
    fewshot_data: str | Path | None = None,
    gen_length: int = 256,
) -> GSM8K:
    """The GSM8K task.

    Args:
        tokenizer: unused (prompts are text); accepted so every task takes the same options.
        data: a GSM8K JSONL file to evaluate (default: the shipped test split).
        shots: few-shot exemplars per prompt (default 5, lm-eval's default).
        seed: few-shot seed.
        fewshot_data: the exemplar pool (default: the shipped 200 train problems).
        gen_length: tokens to generate (default 256).

    Raises:
        AdllmError: missing or malformed data file, bad option values.
    """
    del tokenizer
    return GSM8K(data=data_path(data, TEST_FILE, "GSM8K"),
                 fewshot_data=data_path(fewshot_data, FEWSHOT_FILE, "GSM8K few-shot"),
                 shots=5 if shots is None else shots, seed=seed, gen_length=gen_length)
