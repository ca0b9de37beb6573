"""RULER-style synthetic long-context retrieval, generated here, deterministic from a seed.

Four kinds (``kinds``), ``n`` items each:

* ``passkey``: one line ``The pass key is 48213. Remember it.`` hidden in the haystack; the model
  completes ``The pass key is``.
* ``niah_single``: one ``One of the special magic numbers for {key} is: {7 digits}.``; the model
  gives the number for ``{key}``.
* ``niah_multikey``: the same needle plus ``distractors`` needles with other keys and numbers at
  random depths; the question asks for one key.
* ``vt`` (variable tracking): a chain ``VAR ABCDE = 52817``, ``VAR FGHIJ = VAR ABCDE``, ... of
  ``hops`` assignments, plus a distractor chain with another value; the model lists every
  variable that holds the asked value.

Every prompt is ``instruction + haystack with needles + question``, exactly ``length`` tokens of
the model's tokenizer within +-2% (counted without special tokens, before any chat template): the
haystack is a slice of the text file (cycled when too short), whose size is found by bisection
on its character count. Needles sit on their own lines at line boundaries. Item i of a kind puts
its answer needle at depth ``i / (n - 1)`` of the haystack (0 = start, 1 = end; 0.5 when n = 1),
so depths are spread evenly; the other needles go to random depths. The answer string (the
number; for ``vt`` each variable's assignment) occurs in the prompt exactly once.

Each item is built from a generator seeded with ``(seed, kind, i)`` only, so items do not change
with ``--limit`` or sharding. Evaluation seeds lie in :data:`TEST_SEEDS`; a training recipe that
generates the same kinds of data must call :func:`check_train_seed` so that it never trains on
test items.

Scoring (normalised exact match on the first line of the completion): for number kinds the first
integer in it must equal the needle's number; for ``vt`` the set of five-capital-letter names in it
must equal the chain's names.

Haystack default: the bundled model's held-out Shakespeare text (``models/tiny/heldout.txt``,
65 KB, shipped with the package); any UTF-8 text file may replace it (``data``).
"""

from __future__ import annotations

import random
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from adaptive_dllm._io import read_text_input
from adaptive_dllm.errors import AdllmError
from adaptive_dllm.evaluation.tasks._common import check_count, check_limit, file_digest, item_rng
from adaptive_dllm.evaluation.tasks.base import TaskItem

__all__ = ["KINDS", "TEST_SEEDS", "Retrieval", "check_train_seed", "make_task"]

Kind = Literal["passkey", "niah_single", "niah_multikey", "vt"]
KINDS: tuple[str, ...] = ("passkey", "niah_single", "niah_multikey", "vt")
#: Seeds of evaluation data. Training data of these kinds must use seeds outside this range.
TEST_SEEDS = range(0, 1_000_000)
TOLERANCE = 0.02
DEFAULT_HAYSTACK = Path(__file__).resolve().parents[2] / "models" / "tiny" / "heldout.txt"

_KEYS = ("apple", "anchor", "badger", "candle", "canyon", "cobalt", "falcon", "garnet", "harbor",
         "island", "jasmine", "kettle", "lantern", "marble", "meadow", "nectar", "orchid", "pepper",
         "quartz", "raven", "saddle", "saffron", "tundra", "velvet", "walnut", "willow", "zephyr")
_INTRO = {
    "passkey": "There is an important piece of information hidden inside a lot of irrelevant text. "
               "Find it and memorize it. I will quiz you about it afterwards.",
    "niah": "Some special magic numbers are hidden within the following text. Make sure to "
            "memorize them. I will quiz you about them afterwards.",
    "vt": "Memorize and track the chain(s) of variable assignment hidden in the following text.",
}


def check_train_seed(seed: int) -> int:
    """``seed`` if a training recipe may use it to generate retrieval-style data, else an error:
    evaluation items are generated from seeds in :data:`TEST_SEEDS` only."""
    if seed in TEST_SEEDS:
        raise AdllmError(f"training seed {seed} lies in the retrieval test seeds "
                         f"[{TEST_SEEDS.start}, {TEST_SEEDS.stop}); use a seed >= {TEST_SEEDS.stop}")
    return seed


@dataclass(frozen=True)
class _Spec:
    """One item before the haystack is sized: needles (depth, text), question, answers."""

    intro: str
    needles: list[tuple[float, str]]
    question: str
    answer: str  # the target text
    unique: list[str]  # strings that must occur exactly once in the prompt
    answer_needle: int  # index into needles of the needle holding the answer


def _number(rng: random.Random, digits: int) -> str:
    return str(rng.randrange(10 ** (digits - 1), 10**digits))


def _name(rng: random.Random) -> str:
    return "".join(rng.choices(string.ascii_uppercase, k=5))


def _spec(kind: str, rng: random.Random, depth: float, distractors: int, hops: int) -> _Spec:
    if kind == "passkey":
        key = _number(rng, 5)
        return _Spec(_INTRO["passkey"], [(depth, f"The pass key is {key}. Remember it.")],
                     "What is the pass key? The pass key is", key, [key], 0)
    if kind in ("niah_single", "niah_multikey"):
        count = 1 + (distractors if kind == "niah_multikey" else 0)
        keys = rng.sample(_KEYS, count)
        numbers = [_number(rng, 7) for _ in keys]
        needles = [(depth if i == 0 else rng.random(),
                    f"One of the special magic numbers for {k} is: {v}.")
                   for i, (k, v) in enumerate(zip(keys, numbers, strict=True))]
        question = (f"What is the special magic number for {keys[0]} mentioned in the provided "
                    f"text? The special magic number for {keys[0]} mentioned in the provided text is")
        return _Spec(_INTRO["niah"], needles, question, numbers[0], numbers, 0)
    names = []
    while len(names) < 2 * hops:
        name = _name(rng)
        if name not in names:
            names.append(name)
    value, other = _number(rng, 5), _number(rng, 5)
    needles = []
    for c, (chain, start) in enumerate(((names[:hops], value), (names[hops:], other))):
        needles.append((depth if c == 0 else rng.random(), f"VAR {chain[0]} = {start}"))
        links = zip(chain[:-1], chain[1:], strict=True)
        needles.extend((rng.random(), f"VAR {b} = VAR {a}") for a, b in links)
    question = (f"Find all variables that are assigned the value {value} in the text above. "
                f"Answer: the variables assigned {value} are")
    unique = [f"VAR {n} =" for n in names]
    return _Spec(_INTRO["vt"], needles, question, " ".join(names[:hops]), unique, 0)


def _insert(filler: str, needles: Sequence[tuple[float, str]]) -> tuple[str, list[tuple[int, int]]]:
    """``filler`` with each needle on its own line at a line boundary near its depth; the char
    span of each needle in the result, in the order given."""
    placed = []
    for i, (depth, text) in enumerate(needles):
        cut = filler.rfind("\n", 0, round(depth * len(filler)) + 1) + 1  # 0 when no line break
        if depth >= 1.0:
            cut = len(filler)
        placed.append((cut, i, text))
    pieces, spans, at, length = [], [(0, 0)] * len(needles), 0, 0
    for cut, i, text in sorted(placed):
        pieces.append(filler[at:cut])
        length += cut - at
        sep = "" if cut == 0 or filler[cut - 1] == "\n" else "\n"
        spans[i] = (length + len(sep), length + len(sep) + len(text))
        pieces.append(f"{sep}{text}\n")
        length += len(sep) + len(text) + 1
        at = cut
    pieces.append(filler[at:])
    return "".join(pieces), spans


def _sized(spec: _Spec, text: str, offset: int, length: int,
           tokenizer: Any) -> tuple[str, int, tuple[int, int]]:
    """(prompt, its token count, answer-needle span) with the haystack sized to ``length`` tokens."""
    def build(chars: int) -> tuple[str, int, tuple[int, int]]:
        reps = (offset + chars) // len(text) + 1
        filler = (text * reps)[offset : offset + chars]
        haystack, spans = _insert(filler, spec.needles)
        head = f"{spec.intro}\n\n"
        prompt = f"{head}{haystack}\n\n{spec.question}"
        start, end = spans[spec.answer_needle]
        return prompt, len(tokenizer.encode(prompt, add_special_tokens=False)), (start + len(head),
                                                                                 end + len(head))

    lo, hi = 0, max(64, length)
    built = build(lo)
    if built[1] > length * (1 + TOLERANCE):
        raise AdllmError(f"length {length} is too short: the instruction, needles and question "
                         f"alone take {built[1]} tokens")
    f_lo, upper = built[1], build(hi)
    while upper[1] < length:  # grow until the target is bracketed
        lo, f_lo, hi = hi, upper[1], hi * 2
        upper = build(hi)
    f_hi, best = upper[1], min(built, upper, key=lambda b: abs(b[1] - length))
    step = 0
    while hi - lo > 1 and abs(best[1] - length) > length * TOLERANCE / 8:
        # Tokens grow almost linearly with characters: interpolate inside the bracket, and bisect
        # every other step so that a one-sided interpolation cannot crawl.
        step += 1
        guess = lo + (length - f_lo) * (hi - lo) // max(1, f_hi - f_lo) if step % 2 else (lo + hi) // 2
        mid = min(hi - 1, max(lo + 1, guess))
        built = build(mid)
        if abs(built[1] - length) < abs(best[1] - length):
            best = built
        if built[1] < length:
            lo, f_lo = mid, built[1]
        else:
            hi, f_hi = mid, built[1]
    built = best
    if abs(built[1] - length) > length * TOLERANCE:
        raise AdllmError(f"cannot hit {length} tokens within 2% with this tokenizer (got {built[1]})")
    return built


@dataclass(frozen=True)
class Retrieval:
    """The retrieval task (module docstring). Build it with :func:`make_task`."""

    tokenizer: Any = field(repr=False, compare=False)
    haystack: Path = DEFAULT_HAYSTACK
    length: int = 4096
    kinds: tuple[str, ...] = KINDS
    n: int = 10
    seed: int = 0
    distractors: int = 3
    hops: int = 4
    name: str = "retrieval"
    kind: Literal["generate"] = "generate"
    stop: tuple[str, ...] = ("\n",)
    _text: str = field(default="", repr=False, compare=False)

    def __post_init__(self) -> None:
        unknown = [k for k in self.kinds if k not in KINDS]
        if unknown or not self.kinds:
            raise AdllmError(f"unknown retrieval kind(s) {', '.join(map(repr, unknown)) or '(none)'}; "
                             f"choose from {', '.join(KINDS)}")
        check_count("length", self.length, minimum=16)
        check_count("n", self.n, minimum=1)
        check_count("distractors", self.distractors, minimum=1)
        check_count("hops", self.hops, minimum=1)
        if self.seed not in TEST_SEEDS:
            raise AdllmError(f"retrieval seed {self.seed} must lie in the test seeds "
                             f"[{TEST_SEEDS.start}, {TEST_SEEDS.stop})")
        text = read_text_input(self.haystack, flag="haystack file", errors="replace")
        if len(text.strip()) < 100:
            raise AdllmError(f"haystack file {self.haystack} holds too little text ({len(text)} chars)")
        object.__setattr__(self, "_text", text)

    def depth(self, i: int) -> float:
        """Answer-needle depth of item i of a kind: evenly spread over [0, 1]."""
        return 0.5 if self.n == 1 else i / (self.n - 1)

    def item(self, kind: str, i: int) -> TaskItem:
        """Item i of ``kind``, from its own seeded generator."""
        rng = item_rng(self.seed, "retrieval", kind, i)
        offset = rng.randrange(len(self._text))
        offset = self._text.find("\n", offset) + 1  # start on a line
        for _ in range(20):  # redraw the values in the rare case the haystack contains one
            spec = _spec(kind, rng, self.depth(i), self.distractors, self.hops)
            prompt, tokens, span = _sized(spec, self._text, offset, self.length, self.tokenizer)
            if all(prompt.count(u) == 1 for u in spec.unique):
                break
        else:  # pragma: no cover - needs a haystack full of 5- and 7-digit numbers
            raise AdllmError(f"cannot place a unique {kind} answer in {self.haystack}")
        meta = {"kind": kind, "depth": self.depth(i), "length_tokens": tokens,
                "target_length": self.length, "needle_span": list(span)}
        return TaskItem(id=f"retrieval/{kind}/{i}", prompt=prompt, target=spec.answer, meta=meta)

    def items(self, *, limit: int | None = None) -> list[TaskItem]:
        order = [(kind, i) for kind in self.kinds for i in range(self.n)]
        if check_limit(limit) is not None:
            order = order[:limit]
        return [self.item(kind, i) for kind, i in order]

    def generation_defaults(self) -> dict[str, Any]:
        # Answers are short (a number, or a few five-letter names).
        return {"gen_length": 32, "steps": 32, "block_length": 32}

    def score(self, item: TaskItem, outputs: Sequence[str] | Sequence[float]) -> dict[str, Any]:
        """``correct``: fraction of completions whose first line matches (module docstring)."""
        if not outputs or not all(isinstance(o, str) for o in outputs):
            raise AdllmError(f"{item.id}: retrieval scores a non-empty list of completion strings")
        return {"correct": sum(match(item, str(o)) for o in outputs) / len(outputs), "n": len(outputs)}

    def settings(self) -> dict[str, Any]:
        tok = self.tokenizer
        return {"task": self.name, "haystack": self.haystack.name,
                "haystack_sha256_16": file_digest(self.haystack), "length": self.length,
                "kinds": list(self.kinds), "n": self.n, "seed": self.seed,
                "distractors": self.distractors, "hops": self.hops,
                "tokenizer": f"{type(tok).__name__}/{getattr(tok, 'vocab_size', '?')}"}


def match(item: TaskItem, completion: str) -> bool:
    """Normalised exact match of the completion's first line against the item's target."""
    lines = completion.strip().splitlines()
    first = lines[0] if lines else ""
    if item.meta.get("kind") == "vt":
        return set(re.findall(r"\b[A-Z]{5}\b", first)) == set(item.target.split())
    found = re.search(r"\d+", first.replace(",", ""))
    return found is not None and found.group() == item.target


def make_task(
    *,
    tokenizer: Any = None,
    data: str | Path | None = None,
    shots: int | None = None,
    seed: int = 0,
    length: int = 4096,
    kinds: Sequence[str] = KINDS,
    n: int = 10,
    distractors: int = 3,
    hops: int = 4,
) -> Retrieval:
    """The retrieval task.

    Args:
        tokenizer: the model's tokenizer (``encode``); required, lengths are in its tokens.
        data: the haystack text file (default: the bundled held-out Shakespeare text).
        shots: must be None or 0.
        seed: item seed, in :data:`TEST_SEEDS`.
        length: prompt length in tokens (+-2%).
        kinds: which of :data:`KINDS` (a sequence, or one comma-separated string).
        n: items per kind.
        distractors: extra needles of ``niah_multikey``.
        hops: assignments per ``vt`` chain.

    Raises:
        AdllmError: no tokenizer, unknown kind, missing haystack, bad options.
    """
    if tokenizer is None:
        raise AdllmError("retrieval needs the model's tokenizer to build prompts of a length in "
                         "tokens; this model has none")
    if shots:
        raise AdllmError(f"retrieval is zero-shot; drop --shots {shots}")
    if isinstance(kinds, str):  # "passkey,vt" from --task-option kinds=passkey,vt
        kinds = [k.strip() for k in kinds.split(",") if k.strip()]
    haystack = DEFAULT_HAYSTACK if data is None else Path(data).expanduser()
    return Retrieval(tokenizer=tokenizer, haystack=haystack, length=length, kinds=tuple(kinds), n=n,
                     seed=seed, distractors=distractors, hops=hops)
