"""At which denoising step the retrieval model commits each answer byte (docs/fidelity.md).

For passkey items of the retrieval task (test seed 0), dense greedy generation with the task's
sampler (32 bytes, 32 steps, one block) and ``output_history=True``; for every generated position
the step (1-based forward) after which it stopped being the mask token, split into the answer's
digits and the rest (the end-of-text padding and the final full stop). This tells whether a
sparse plan built after the dense steps (skip 0.2: steps 1-7 dense) still decides the digits.
One JSON object per model, written atomically to a JSONL file:

    PYTHONPATH=src python scripts/retrieval_commit_order.py --model retrieval [DIR ...] --out FILE
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import platform
import sys
from pathlib import Path

import torch

import adaptive_dllm as ad
from adaptive_dllm._io import append_jsonl, atomic_write, check_output_path
from adaptive_dllm.bench.timing import environment
from adaptive_dllm.evaluation.tasks.retrieval import make_task


def commit_steps(history: torch.Tensor, mask_id: int) -> list[int]:
    """(forwards + 1, 1, G) history -> for each of the G positions the first forward after
    which it is no longer ``mask_id`` (1-based)."""
    masked = history[:, 0, :] == mask_id  # (forwards + 1, G)
    return [int(masked[:, j].int().argmin()) for j in range(masked.shape[1])]


def trace(model_name: str, *, length: int, items: int) -> dict:
    model, tok = ad.load(model_name, device="cpu")
    task = make_task(tokenizer=tok, length=length, kinds=["passkey"], n=items)
    weights = Path(model.source) / "model.safetensors"
    rows = []
    for item in task.items():
        out = ad.generate(model, tok, item.prompt, output_history=True,
                          **task.generation_defaults())
        steps = commit_steps(out.history, model.config.mask_id)
        ids, target = out.ids[0].tolist(), list(item.target.encode())
        start = next((j for j in range(len(ids)) if ids[j:j + len(target)] == target), None)
        digits = [] if start is None else list(range(start, start + len(target)))
        rows.append({"id": item.id, "target": item.target, "completion": out.text,
                     "digit_steps": [steps[j] for j in digits],
                     "other_steps": [s for j, s in enumerate(steps) if j not in digits]})
        print(f"{model_name} {item.id}: digits at steps {rows[-1]['digit_steps']}", file=sys.stderr)
    return {"model": model_name,
            "sha256_16": hashlib.sha256(weights.read_bytes()).hexdigest()[:16],
            "length": length, "sampler": task.generation_defaults(), "items": rows}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", nargs="+", default=["retrieval"], help="bundled names or directories")
    p.add_argument("--length", type=int, default=2048)
    p.add_argument("--items", type=int, default=3, help="passkey items (depths spread evenly)")
    p.add_argument("--out", required=True, help="JSONL file (replaced atomically)")
    args = p.parse_args()
    check_output_path(args.out)
    meta = {"date": datetime.date.today().isoformat(), **environment(), "device": "cpu",
            "machine": platform.machine(), "command": " ".join(["python"] + sys.argv)}
    records = [trace(m, length=args.length, items=args.items) for m in args.model]
    with atomic_write(args.out) as f:
        for r in records:
            append_jsonl(f, {**meta, **r})


if __name__ == "__main__":
    main()
