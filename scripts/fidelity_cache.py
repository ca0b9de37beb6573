"""Fidelity of the approximate K/V cache and threshold decoding on the bundled model (CPU).

For no cache / prefix / dual x dense / uniform sparse (reference backend) x threshold
{none, 0.9, 0.7}: greedy generation from held-out prompts, compared token by token with the
no-cache dense run (the same prompts, one token per step). Writes one JSON record per
configuration (commit, device, versions, command, values) to a JSONL file, atomically, and prints
the markdown table of docs/fidelity.md.

    PYTHONPATH=src python scripts/fidelity_cache.py --out benchmarks/results/fidelity_cache_cpu.jsonl

``gen nll`` scores what each configuration generated with the dense model without a cache:
the mean NLL (nats per byte) of the generated tokens at 50% random masks (3 seeded draws, the
same masks for every row), given the prompt and the unmasked generated tokens: a plausibility
proxy next to the agreement, which counts any early divergence as wrong all the way down.

Held-out NLL does not apply to these rows: the cache and threshold change only how tokens are
decoded, and a likelihood forward is one full forward with or without them (the sparse NLL is the
likelihood table above it in docs/fidelity.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import adaptive_dllm as ad
from adaptive_dllm.sparsity import SparseConfig

PASSAGE = 1024  # bytes per held-out passage (evaluation/data.py)


def prompts(tokenizer: object, n: int, length: int) -> list[list[int]]:
    """The first ``length`` bytes of held-out passages 0, 16, 32, ... (one per work)."""
    text = (Path(ad.__file__).parent / "models" / "tiny" / "heldout.txt").read_bytes()
    rows = [text[i * 16 * PASSAGE: i * 16 * PASSAGE + length] for i in range(n)]
    return [tokenizer.encode(r.decode("utf-8", errors="replace"))[:length] for r in rows]


def generated_nll(model: torch.nn.Module, sequences: torch.Tensor, prompt_length: int) -> float:
    """Mean NLL of the generated tokens at 50% random masks (see the module docstring)."""
    mask_id = model.config.mask_id
    gen = sequences[:, prompt_length:]
    total, count = 0.0, 0
    g = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for _ in range(3):
            hide = torch.rand(gen.shape, generator=g) < 0.5
            x = sequences.clone()
            x[:, prompt_length:] = torch.where(hide, mask_id, gen)
            logits = model(x, logits_from=prompt_length).float()
            nll = -torch.log_softmax(logits, -1).gather(-1, gen[..., None]).squeeze(-1)
            total += nll[hide].sum().item()
            count += int(hide.sum())
    return total / count


def run(args: argparse.Namespace) -> list[dict]:
    torch.manual_seed(0)
    model, tok = ad.load()
    ids = prompts(tok, args.prompts, args.prompt_length)
    width = min(len(r) for r in ids)
    batch = torch.tensor([r[:width] for r in ids])  # equal lengths: no padding
    opts = {"gen_length": args.gen_length, "block_length": args.block_length}
    sparse = SparseConfig(select=args.select, skip=args.skip, block_size=args.block_size,
                          backend="reference")
    base = None
    records = []
    for cache in (None, "prefix", "dual"):
        for attention in ("dense", "sparse"):
            for threshold in (None, 0.9, 0.7):
                start = time.perf_counter()
                out = ad.generate(model, tok, batch, cache=cache, threshold=threshold,
                                  sparse=None if attention == "dense" else sparse, **opts)
                seconds = time.perf_counter() - start
                if base is None:
                    base = out.ids
                s = out.stats
                sp = s["sparse"] or {}
                records.append({
                    "cache": cache, "attention": attention, "threshold": threshold,
                    "agree": (out.ids == base).float().mean().item(),
                    "rows_identical": int((out.ids == base).all(-1).sum()),
                    "gen_nll": generated_nll(model, out.sequences, width),
                    "forwards": s["forwards"], "refreshes": s["refreshes"],
                    "tokens_per_forward": s["tokens_per_forward"], "seconds": seconds,
                    "keep_prefill": sp.get("realized_keep_ratio"),
                    "keep_cached": sp.get("cached_keep_ratio"),
                })
                print(f"{cache} {attention} {threshold}: agree {records[-1]['agree']:.3f}, "
                      f"{s['forwards']} forwards, {seconds:.1f} s", file=sys.stderr)
    return records


def provenance(args: argparse.Namespace) -> dict:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or None
    return {"commit": commit, "device": f"cpu ({platform.processor() or platform.machine()}, "
                                        f"{torch.get_num_threads()} threads)",
            "torch": torch.__version__, "command": " ".join(["python"] + sys.argv),
            "prompts": args.prompts, "prompt_length": args.prompt_length,
            "gen_length": args.gen_length, "block_length": args.block_length,
            "select": args.select, "skip": args.skip, "block_size": args.block_size}


def table(records: list[dict]) -> str:
    lines = ["| cache | attention | threshold | agree | gen nll | forwards | "
             "tokens/forward | keep (refresh / cached) | s |", "|---" * 9 + "|"]
    for r in records:
        keep = "-" if r["keep_prefill"] is None else (
            f"{r['keep_prefill']:.2f} / "
            + ("-" if r["keep_cached"] is None else f"{r['keep_cached']:.2f}"))
        lines.append(f"| {r['cache'] or 'none'} | {r['attention']} | {r['threshold'] or 'none'} "
                     f"| {r['agree']:.3f} | {r['gen_nll']:.3f} | {r['forwards']} | "
                     f"{r['tokens_per_forward']:.2f} | {keep} | {r['seconds']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="JSONL file (replaced atomically)")
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--prompt-length", type=int, default=128)
    p.add_argument("--gen-length", type=int, default=64)
    p.add_argument("--block-length", type=int, default=16)
    p.add_argument("--select", type=float, default=0.3)
    p.add_argument("--skip", type=float, default=0.2)
    p.add_argument("--block-size", type=int, default=32)
    args = p.parse_args()
    out = Path(args.out)
    if not out.parent.is_dir():
        raise SystemExit(f"fidelity_cache: directory {str(out.parent)!r} does not exist")
    meta = provenance(args)  # the commit the run starts from
    records = run(args)
    fd, tmp = tempfile.mkstemp(dir=out.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        for r in records:
            f.write(json.dumps({**meta, **r}) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, 0o644)
    os.replace(tmp, out)
    print(table(records))


if __name__ == "__main__":
    main()
