"""Why multi-key needles fail: does any head of the answer's queries attend to the *asked* needle
rather than to every needle? (issue #13; docs/retrieval_model.md §5, step 3)

Shape legend: Ly layers, H query heads, N needles of an item, L sequence length.

For each ``niah_multikey`` item (the task's own items, test seed 0 unless told) the probe runs
one dense forward in the state of the first generation step (prompt + mask tokens) and measures,
per query head, the attention mass of the answer queries (``retrieval_study_heads``) on the
7-digit number of every needle. Per head it reports, averaged over items:

* ``selectivity``: mass on the asked needle's number / mass on all needles' numbers (chance:
  1 / N; 1 = the head reads the asked needle only);
* ``hit``: the fraction of items where the asked needle's number gets the head's largest mass;
* ``numbers``: the mass on all needles' numbers together (how much the head reads needles at all);
  only heads with at least ``READER_MASS`` there ("reader heads") are ranked by selectivity.

With the model's dense accuracy on the same items, per length: if the best head's selectivity
falls towards 1 / N as the haystack grows while ``numbers`` stays high, the model still finds the
needles but no longer binds the asked key to its number (attention, not copying, fails).

    PYTHONPATH=src python scripts/retrieval_binding_probe.py --lengths 512,1024,2048,4096 \\
        --items 10 --out benchmarks/results/retrieval_binding_probe_cpu/probe.jsonl

``--gaps 0,16,64,256`` separates the cause: the task's 512-byte items have their needles on
adjacent lines; the probe re-lays them into a ``--lengths``-character prompt with that many
characters of haystack between consecutive needles (the rest before and after them), so length,
answer distance and needle spacing can be varied one at a time.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from retrieval_study_heads import _AnswerAttention, token_span  # noqa: E402

import adaptive_dllm as ad  # noqa: E402
from adaptive_dllm._io import atomic_write, check_output_path  # noqa: E402
from adaptive_dllm.evaluation.tasks.retrieval import make_task, match  # noqa: E402

NEEDLE = re.compile(r"One of the special magic numbers for (\w+) is: (\d+)\.")
READER_MASS = 0.05  # heads whose answer queries put at least this much mass on the numbers
ASKED = re.compile(r"What is the special magic number for (\w+) mentioned")


def needle_numbers(prompt: str) -> tuple[list[tuple[int, int]], int]:
    """Char spans of every needle's number, and the index of the asked needle among them."""
    found = list(NEEDLE.finditer(prompt))
    asked = ASKED.search(prompt).group(1)
    spans = [m.span(2) for m in found]
    return spans, [m.group(1) for m in found].index(asked)


def relay(prompt: str, filler: str, gap: int, total: int, seed: int) -> str:
    """``prompt`` (an item whose needles are adjacent lines) with ``gap`` characters of
    ``filler`` (cut at a line end) between consecutive needles, and filler before the first and
    after the last needle (half each) to about ``total`` characters; the intro and the question
    stay where they are."""

    def piece(n: int, k: int) -> str:
        if n <= 0:
            return ""
        start = (seed * 7919 + k * 104729) % (len(filler) - n - 1)
        cut = filler[start: start + n]
        return cut[: cut.rfind("\n") + 1]

    lines = re.findall(r"One of the special magic numbers for \w+ is: \d+\.\n", prompt)
    intro_end, question = prompt.index("\n\n") + 2, prompt.rindex("\n\n")
    body = "".join(line + (piece(gap, j) if j < len(lines) - 1 else "")
                   for j, line in enumerate(lines))
    rest = max(0, total - intro_end - len(body) - (len(prompt) - question))
    return (prompt[:intro_end] + piece(rest // 2, 100) + body + piece(rest - rest // 2, 200)
            + prompt[question:])


@torch.no_grad()
def probe_item(model, tok, prompt: str, answer: str, gen_length: int) -> dict[str, torch.Tensor]:
    """Per head (Ly, H): mass on the asked number, on all numbers, and whether the asked one
    gets the largest mass of the numbers."""
    cfg = model.config
    spans, asked = needle_numbers(prompt)
    token_spans = [token_span(tok, prompt, s)[1:] for s in spans]
    ids = token_span(tok, prompt, spans[0])[0]
    n_answer = max(1, min(gen_length, len(tok.encode(f" {answer}", add_special_tokens=False))))
    x = torch.tensor([ids + [cfg.mask_id] * gen_length], device=next(model.parameters()).device)
    hook = _AnswerAttention(cfg.n_layers, torch.arange(len(ids), len(ids) + n_answer))
    model(x, attn=hook)
    rows = torch.stack(hook.rows).double()  # (Ly, H, L)
    per = torch.stack([rows[..., a:b].sum(-1) for a, b in token_spans], -1)  # (Ly, H, N)
    total = per.sum(-1)
    return {"asked": per[..., asked], "numbers": total,
            "hit": (per.argmax(-1) == asked).double(), "n_needles": torch.tensor(len(spans))}


def run_length(model, tok, length: int, items: int, seed: int, gen: bool,
               gap: int | None = None) -> dict:
    """One record: the task's items at ``length``; with ``gap``, the task's 512-byte items (whose
    needles are adjacent) re-laid by :func:`relay` to ``length`` characters."""
    task = make_task(tokenizer=tok, length=512 if gap is not None else length,
                     kinds=["niah_multikey"], n=items, seed=seed)
    filler = task.haystack.read_text(errors="replace") if gap is not None else ""
    asked, numbers, hits, correct, needles = [], [], [], [], []
    for i in range(items):
        item = task.item("niah_multikey", i)
        prompt = item.prompt if gap is None else relay(item.prompt, filler, gap, length, i)
        r = probe_item(model, tok, prompt, item.target, 32)
        asked.append(r["asked"])
        numbers.append(r["numbers"])
        hits.append(r["hit"])
        needles.append(int(r["n_needles"]))
        if gen:
            out = ad.generate(model, tok, prompt, **task.generation_defaults())
            correct.append(match(item, out.text))
    asked, numbers, hits = (torch.stack(t) for t in (asked, numbers, hits))  # (I, Ly, H)
    selectivity = (asked / numbers.clamp_min(1e-12)).mean(0)  # (Ly, H)
    hit, mass = hits.mean(0), numbers.mean(0)
    # Selectivity means something only for heads that read the numbers at all.
    readers = mass >= READER_MASS
    ranked = torch.where(readers, selectivity, -1.0).flatten()
    best = int(ranked.argmax())
    H = selectivity.shape[1]
    top = [i for i in ranked.argsort(descending=True)[:5].tolist() if ranked[i] >= 0]
    return {"length": length, "gap": gap, "items": items, "seed": seed,
            "needles": sorted(set(needles)),
            "chance": 1 / max(needles), "accuracy": sum(correct) / len(correct) if correct else None,
            "reader_mass": READER_MASS, "readers": int(readers.sum()),
            "best_head": f"{best // H}.{best % H}" if readers.any() else None,
            "best_selectivity": float(selectivity.flatten()[best]) if readers.any() else None,
            "best_hit": float(hit.flatten()[best]) if readers.any() else None,
            "best_numbers_mass": float(mass.flatten()[best]) if readers.any() else None,
            "top5": [{"head": f"{i // H}.{i % H}", "selectivity": round(float(selectivity.flatten()[i]), 3),
                      "hit": round(float(hit.flatten()[i]), 3),
                      "numbers_mass": round(float(mass.flatten()[i]), 3)} for i in top],
            "selectivity": selectivity.tolist(), "hit": hit.tolist(), "numbers_mass": mass.tolist()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="retrieval")
    p.add_argument("--lengths", default="512,1024,2048,4096")
    p.add_argument("--items", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gaps", default=None, help="comma-separated characters of haystack between "
                   "consecutive needles (the 512-byte items re-laid to each --lengths value); "
                   "default: the task's own items (needles at random depths)")
    p.add_argument("--no-generate", action="store_true", help="skip the accuracy (32 steps/item)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, required=True, help="JSONL of one record per length")
    a = p.parse_args(argv)
    out = check_output_path(a.out)  # before the work
    model, tok = ad.load(a.model, device=a.device)
    lines = []
    gaps = [None] if a.gaps is None else [int(x) for x in a.gaps.split(",")]
    for length, gap in ((n, g) for n in (int(x) for x in a.lengths.split(",")) for g in gaps):
        started = time.perf_counter()
        rec = run_length(model, tok, length, a.items, a.seed, not a.no_generate, gap)
        rec["seconds"] = round(time.perf_counter() - started, 1)
        given = sys.argv[1:] if argv is None else argv
        rec["command"] = "python scripts/retrieval_binding_probe.py " + " ".join(given)
        lines.append(json.dumps(rec))
        print(f"{length} gap {gap}: accuracy {rec['accuracy']}, {rec['readers']} reader heads, best "
              f"{rec['top5'][:2]} (chance {rec['chance']:.2f})", file=sys.stderr)
    with atomic_write(out) as f:
        f.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
