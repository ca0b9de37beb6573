"""Small deterministic tasks for the runner's tests (the real tasks live on another branch).

``ToyGenerate``: prompts of different lengths taken from the bundled model's held-out text; an
item is correct when the completion (cut at the stop sequence) contains its target letter, so the
accuracy is a real function of what the model generated. ``ToyChoice``: a loglikelihood task with
two choices per item; correct when the first choice gets the higher estimate.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adaptive_dllm.errors import AdllmError
from adaptive_dllm.evaluation.tasks.base import TaskItem

PROMPTS = ("ROMEO:\n", "JULIET:\nO Romeo, ", "First Citizen:\nBefore we proceed any further, hear",
           "KING:\n", "HAMLET:\nTo be, or not", "MACBETH:\nIs this a dagger which I see",
           "LEAR:\nBlow, winds", "PROSPERO:\n")


@dataclass
class ToyGenerate:
    n: int = 8
    gen_length: int = 16
    name: str = "toy"
    kind: str = "generate"
    stop: tuple[str, ...] = ("\n\n",)
    scored: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)

    def items(self, *, limit: int | None = None) -> list[TaskItem]:
        out = [TaskItem(id=f"toy/{i}", prompt=PROMPTS[i % len(PROMPTS)] + ("" if i < 8 else " " * (i % 3)),
                        target="aeiou"[i % 5], meta={"i": i}) for i in range(self.n)]
        return out[:limit] if limit is not None else out

    def generation_defaults(self) -> dict[str, Any]:
        return {"gen_length": self.gen_length, "steps": self.gen_length, "block_length": self.gen_length}

    def score(self, item: TaskItem, outputs: Sequence[Any]) -> dict[str, Any]:
        self.scored.append((item.id, tuple(outputs)))
        hits = [item.target in text for text in outputs]
        return {"correct": sum(hits) / len(hits), "length": sum(len(t) for t in outputs) / len(outputs)}

    def settings(self) -> dict[str, Any]:
        return {"n": self.n, "gen_length": self.gen_length}


@dataclass
class ToyChoice:
    n: int = 4
    name: str = "toychoice"
    kind: str = "loglikelihood"
    stop: tuple[str, ...] = ()

    def items(self, *, limit: int | None = None) -> list[TaskItem]:
        out = [TaskItem(id=f"c/{i}", prompt=PROMPTS[i], target="0", choices=(" the", " zqx"))
               for i in range(self.n)]
        return out[:limit] if limit is not None else out

    def generation_defaults(self) -> dict[str, Any]:
        return {}

    def score(self, item: TaskItem, outputs: Sequence[Any]) -> dict[str, Any]:
        best = max(range(len(outputs)), key=lambda j: outputs[j])
        return {"correct": float(str(best) == item.target)}

    def settings(self) -> dict[str, Any]:
        return {"n": self.n}


@dataclass
class ToyFile(ToyGenerate):
    """Items from a JSONL file of {"prompt", "target"} lines (malformed lines: one-line error)."""

    data: Path | None = None

    def items(self, *, limit: int | None = None) -> list[TaskItem]:
        out = []
        for number, line in enumerate(Path(self.data).read_text().splitlines(), start=1):
            try:
                row = json.loads(line)
                out.append(TaskItem(id=f"file/{number}", prompt=row["prompt"], target=row["target"]))
            except (json.JSONDecodeError, KeyError, TypeError):
                raise AdllmError(f"{self.data}: line {number} is not a JSON object with prompt and "
                                 "target; fix the file") from None
        return out[:limit] if limit is not None else out

    def settings(self) -> dict[str, Any]:
        return {"data": str(self.data), "gen_length": self.gen_length}


def make_task(**options: Any) -> Any:
    """Factory with the signature the task table expects: ``kind=`` picks the toy task."""
    kind = options.pop("kind", "generate")
    if "data" in options:
        return ToyFile(data=Path(options["data"]), gen_length=options.get("gen_length", 16))
    options = {k: v for k, v in options.items() if k in ("n", "gen_length")}
    return ToyGenerate(**options) if kind == "generate" else ToyChoice(**options)
