"""Helpers shared by the task modules: data-file fingerprints, per-item seeds, option checks."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from adaptive_dllm.errors import AdllmError

T = TypeVar("T")

#: The data files shipped with the package.
DATA_DIR = Path(__file__).resolve().parent / "data"


def file_digest(path: Path) -> str:
    """First 16 hex digits of the file's SHA-256: what ``settings()`` records of a data file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def item_rng(seed: int, *key: Any) -> random.Random:
    """A generator that depends only on ``seed`` and the item's key (e.g. its index), never on
    which other items run, so that ``--limit`` and sharding over ranks do not change prompts.

    Seeded with a SHA-256 digest: unlike ``hash()``, the same in every process and Python run.
    """
    text = ":".join(str(k) for k in (seed, *key))
    return random.Random(int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big"))


def draw_shots(pool: Sequence[T], question: str, question_of: Callable[[T], str], shots: int,
               rng: random.Random) -> list[T]:
    """Up to ``shots`` few-shot examples drawn by ``rng`` from ``pool``, never one whose question
    is the evaluated ``question`` (fewer only when too few others exist)."""
    others = [e for e in pool if question_of(e).strip() != question.strip()]
    return rng.sample(others, min(shots, len(others)))


def check_count(name: str, value: Any, *, minimum: int) -> int:
    """``value`` as an int >= ``minimum``, else a one-line error naming the option."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise AdllmError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_limit(limit: int | None) -> int | None:
    """``items(limit=...)``: None (all) or a positive count."""
    return None if limit is None else check_count("limit", limit, minimum=1)


def data_path(data: str | Path | None, default: Path, what: str) -> Path:
    """The user's data file (must exist) or the shipped default."""
    if data is None:
        return default
    p = Path(data).expanduser()
    if not p.is_file():
        raise AdllmError(f"{what} data file {str(p)!r} does not exist; check --data")
    return p
