"""Item-paired accuracy of cache + threshold cells against dense without a cache (the `--fast`
preset study of scripts/fast_preset_study.sh).

Every cell is compared with the reference cell (``cache-none_threshold-none``) on the same items.
An item the reference answers and the cell misses is a loss (``b``), the reverse a gain (``c``);
the cell's accuracy loss is ``(b - c) / N <= b / N``, so the one-sided 95% Clopper-Pearson upper
bound of ``b / N`` bounds the loss whatever the gains are. With ``b = 0`` that bound is
``1 - 0.05 ** (1 / N)`` (about ``3 / N``): 300 items bound a loss to 1 point.

The accuracy change gets a paired Wald 95% interval as well. Several study directories (each of
its own test seed) pool into one report. Writes ``fast_preset.json`` (the numbers) and
``fast_preset_tables.md`` (for docs/fidelity.md) into the first DIR, atomically:

    PYTHONPATH=src python scripts/fast_preset_report.py DIR [DIR ...]
"""

from __future__ import annotations

import json
import math
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from adaptive_dllm._io import dumps_json, write_text

REFERENCE = "cache-none_threshold-none"


def binomial_upper(k: int, n: int, *, alpha: float = 0.05) -> float:
    """One-sided (1 - alpha) Clopper-Pearson upper bound of a proportion seen k times in n:
    the p at which P(X <= k | n, p) = alpha, by bisection (exact binomial tail)."""
    if not 0 <= k <= n or n == 0:
        raise ValueError(f"need 0 <= k <= n and n > 0, got k={k}, n={n}")
    if k == n:
        return 1.0

    def cdf(p: float) -> float:
        return sum(math.comb(n, i) * p ** i * (1 - p) ** (n - i) for i in range(k + 1))

    lo, hi = k / n, 1.0
    for _ in range(60):  # cdf falls as p rises
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) > alpha else (lo, mid)
    return hi


def paired_interval(losses: int, gains: int, n: int, *, z: float = 1.959964) -> list[float]:
    """Wald 95% interval of a paired accuracy change (gains - losses) / n: its variance is that
    of the per-item difference, ((b + c) - (c - b)**2 / n) / n**2 (McNemar's setting)."""
    change = (gains - losses) / n
    half = z * math.sqrt(max(0.0, (losses + gains) - (gains - losses) ** 2 / n)) / n
    return [change - half, change + half]


def read_cell(path: Path) -> dict[str, dict[str, Any]]:
    """``seed/item id`` -> its record (the settings line and other modes' records skipped)."""
    header, *lines = path.read_text(encoding="utf-8").splitlines()
    seed = json.loads(header)["settings"]["task_settings"]["seed"]
    rows = {}
    for line in lines:
        record = json.loads(line)
        if record.get("mode") == "dense":
            rows[f"{seed}/{record['id']}"] = record
    return rows


def read_cells(roots: list[Path], name: str) -> dict[str, dict[str, Any]]:
    """One cell pooled over the study directories (each of its own test seed)."""
    rows: dict[str, dict[str, Any]] = {}
    for root in roots:
        rows |= read_cell(root / f"{name}.jsonl")
    return rows


def kind(key: str) -> str:
    return key.split("/")[2]  # seed/retrieval/KIND/i


def compare(reference: dict[str, dict[str, Any]], cell: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Accuracy per kind and pooled, forwards per item, and the paired loss bound."""
    missing = sorted(set(reference) ^ set(cell))
    if missing:
        raise SystemExit(f"cells differ in items (e.g. {missing[0]}); finish both runs first")
    per_kind: dict[str, list[float]] = defaultdict(list)
    losses = gains = same = 0
    for item_id, ref in reference.items():
        got = cell[item_id]
        ok, ref_ok = got["metrics"]["correct"] == 1.0, ref["metrics"]["correct"] == 1.0
        per_kind[kind(item_id)].append(float(ok))
        losses += ref_ok and not ok
        gains += ok and not ref_ok
        same += got["outputs"] == ref["outputs"]
    n = len(reference)
    forwards = [r["forwards"] for r in cell.values()]
    return {
        "n": n,
        "accuracy": sum(sum(v) for v in per_kind.values()) / n,
        "accuracy_per_kind": {k: sum(v) / len(v) for k, v in sorted(per_kind.items())},
        "forwards_per_item": sum(forwards) / n,
        "max_forwards": max(forwards),
        "losses": losses, "gains": gains,
        "accuracy_change": (gains - losses) / n,
        "change_ci95": paired_interval(losses, gains, n),
        "loss_upper95": binomial_upper(losses, n),
        "same_output": same / n,
    }


def table(results: dict[str, dict[str, Any]]) -> str:
    kinds = list(next(iter(results.values()))["accuracy_per_kind"])
    head = ["cache", "threshold", "accuracy", *kinds, "forwards / item", "lost / gained",
            "change, 95% CI (points)", "loss bound (95%)", "same output"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in results.items():
        cache, tau = (part.split("-", 1)[1] for part in name.split("_"))
        lines.append("| " + " | ".join([
            cache, tau, f"{r['accuracy']:.3f}",
            *(f"{r['accuracy_per_kind'][k]:.2f}" for k in kinds),
            f"{r['forwards_per_item']:.2f}", f"{r['losses']} / {r['gains']}",
            "{:+.1f} [{:+.1f}, {:+.1f}]".format(100 * r["accuracy_change"],
                                                *(100 * x for x in r["change_ci95"])),
            f"{100 * r['loss_upper95']:.1f} pt", f"{r['same_output']:.3f}"]) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if not argv:
        raise SystemExit("usage: fast_preset_report.py DIR [DIR ...] (pooled; the first gets "
                         "the report)")
    roots = [Path(a) for a in argv]
    reference = read_cells(roots, REFERENCE)
    # The cells every directory ran (a directory of another seed may run fewer).
    cells = sorted(set.intersection(*({p.stem for p in r.glob("cache-*.jsonl")} for r in roots)))
    results = {REFERENCE: compare(reference, reference)}
    results |= {name: compare(reference, read_cells(roots, name))
                for name in cells if name != REFERENCE}
    report = {"reference": REFERENCE, "directories": [r.name for r in roots], "cells": results}
    write_text(roots[0] / "fast_preset.json", dumps_json(report, indent=1) + "\n")
    write_text(roots[0] / "fast_preset_tables.md", table(results))
    sys.stdout.write(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
