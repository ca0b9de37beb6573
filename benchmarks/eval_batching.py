"""Items per second of a task evaluation at several batch sizes (issue 12: batch 8 >= 3x batch 1).

Runs :func:`adaptive_dllm.evaluation.runner.evaluate_task` (dense) over the same items once per
batch size and appends one JSONL record (commit, device, command, numbers) to --out.

    PYTHONPATH=src python benchmarks/eval_batching.py --out benchmarks/results/eval_batching.jsonl
    PYTHONPATH=src python benchmarks/eval_batching.py --task gsm8k --data ../shared/data/gsm8k/test.jsonl

Without --task the items are GSM8K test questions as zero-shot prompts (``Question: ...\\nAnswer:``),
read from --questions; only the timing is of interest then, not the score.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

import adaptive_dllm as ad
from adaptive_dllm._io import check_output_path, dumps_json
from adaptive_dllm.evaluation.runner import RunSettings, evaluate_task
from adaptive_dllm.evaluation.tasks.base import TaskItem, get_task

DEFAULT_QUESTIONS = Path(__file__).resolve().parents[1].parent / "shared/data/gsm8k/test.jsonl"


class QuestionPrompts:
    """GSM8K questions as prompts; correct = the gold final number appears in the completion."""

    name, kind, stop = "gsm8k-questions", "generate", ("\n\n",)

    def __init__(self, path: Path) -> None:
        self.path = path

    def items(self, *, limit: int | None = None) -> list[TaskItem]:
        rows = [json.loads(line) for line in self.path.read_text().splitlines()[: limit or None]]
        return [TaskItem(id=f"q/{i}", prompt=f"Question: {r['question']}\nAnswer:",
                         target=r["answer"].rsplit("####", 1)[-1].strip()) for i, r in enumerate(rows)]

    def generation_defaults(self) -> dict[str, Any]:
        return {}

    def score(self, item: TaskItem, outputs: Sequence[str]) -> dict[str, Any]:
        return {"correct": float(item.target in outputs[0])}

    def settings(self) -> dict[str, Any]:
        return {"path": str(self.path)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default=None, help="a registered task (default: GSM8K question prompts)")
    p.add_argument("--data", default=None, help="--task's data file")
    p.add_argument("--questions", type=Path, default=DEFAULT_QUESTIONS)
    p.add_argument("--model", default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--items", type=int, default=16)
    p.add_argument("--batch-sizes", default="1,8")
    p.add_argument("--gen-length", type=int, default=64)
    p.add_argument("--steps", type=int, default=64)
    p.add_argument("--block-length", type=int, default=32)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.out is not None:
        check_output_path(args.out)
    model, tok = ad.load(args.model, device=args.device)
    if args.task is None:
        task: Any = QuestionPrompts(args.questions)
    else:
        task = get_task(args.task, tokenizer=tok, **({"data": args.data} if args.data else {}))
    sampler = {"gen_length": args.gen_length, "steps": args.steps, "block_length": args.block_length}
    runs = []
    for b in (int(x) for x in args.batch_sizes.split(",")):
        settings = RunSettings(modes=("dense",), sampler=sampler, batch_size=b, limit=args.items)
        started = time.perf_counter()
        report = evaluate_task(model, tok, task, settings)
        wall = time.perf_counter() - started
        res = report.results[0]
        runs.append({"batch_size": b, "items": res.n, "wall_s": round(wall, 2),
                     "items_per_s": round(res.n / wall, 4), "accuracy": res.accuracy,
                     "tokens_per_s": res.tokens_per_s})
        print(f"batch {b}: {res.n} items in {wall:.1f} s = {res.n / wall:.3f} items/s", file=sys.stderr)  # noqa: T201
    base = runs[0]["items_per_s"]
    record = {
        "benchmark": "eval_batching",
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                 text=True).stdout.strip() or None,
        "date": time.strftime("%Y-%m-%d"), "device": str(next(model.parameters()).device),
        "machine": platform.processor() or platform.machine(), "cpu_threads": torch.get_num_threads(),
        "load_average_1m": os.getloadavg()[0], "torch": torch.__version__,
        "command": "python " + " ".join(sys.argv), "model": getattr(model, "source", None),
        "task": task.name, "sampler": sampler, "runs": runs,
        "speedup_vs_first": {str(r["batch_size"]): round(r["items_per_s"] / base, 2) for r in runs},
    }
    print(dumps_json(record))  # noqa: T201
    if args.out is not None:
        with args.out.open("a", encoding="utf-8") as handle:
            handle.write(dumps_json(record) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
