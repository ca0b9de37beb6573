"""Plot and markdown tables of the retrieval fidelity study (scripts/retrieval_study.py).

Reads the study's records (``accuracy.jsonl``, ``heads.jsonl``, ``prune.jsonl`` under the results
directory) and writes, atomically, ``accuracy.png`` (accuracy vs select, one panel per prompt
length and one line per budget rule, dense as a dashed line; all kinds pooled, item-weighted)
and ``fidelity_tables.md`` (for docs/fidelity.md: every accuracy cell with its realised keep
ratio, per kind and pooled; the top heads and their needle mass; pruning).

    PYTHONPATH=src python scripts/retrieval_study_report.py RESULTS_DIR
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from adaptive_dllm._io import atomic_path, write_text


def read_records(path: Path) -> list[dict[str, Any]]:
    """The whole JSON lines of ``path`` (none when it is missing; a cut last line is skipped)."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            break
    return out


def pooled(records: Sequence[dict[str, Any]]) -> dict[tuple[int, str, float], dict[str, Any]]:
    """(length, rule, select) -> item-weighted accuracy and keep ratio over the kinds."""
    groups: dict[tuple[int, str, float], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        groups[(r["length"], r["rule"], float(r["select"]))].append(r)
    out = {}
    for key, rows in groups.items():
        n = sum(r["n"] for r in rows)
        keeps = [(r["keep"], r["n"]) for r in rows if r.get("keep") is not None]
        out[key] = {"n": n, "kinds": sorted(r["kind"] for r in rows),
                    "accuracy": sum(r["accuracy"] * r["n"] for r in rows) / n if n else None,
                    "keep": sum(k * m for k, m in keeps) / sum(m for _, m in keeps) if keeps else None}
    return out


def _rules(records: Sequence[dict[str, Any]]) -> list[str]:
    """Sparse rules in a stable order: uniform first, then as recorded."""
    names = list(dict.fromkeys(r["rule"] for r in records if r["rule"] != "dense"))
    return sorted(names, key=lambda n: (n != "uniform", names.index(n)))


def plot_accuracy(records: Sequence[dict[str, Any]], path: Path) -> Path:
    """``accuracy.png``: one panel per length, accuracy vs select per rule (pooled kinds)."""
    from matplotlib.figure import Figure  # a Figure of its own: no pyplot state

    cells = pooled(records)
    lengths = sorted({k[0] for k in cells})
    rules = _rules(records)
    fig = Figure(figsize=(5.2 * max(1, len(lengths)), 4.0))
    axes = fig.subplots(1, max(1, len(lengths)), squeeze=False)[0]
    styles = {"global": "-", "per_layer": "--"}
    for ax, length in zip(axes, lengths, strict=False):
        dense = cells.get((length, "dense", 1.0))
        if dense is not None:
            ax.axhline(dense["accuracy"], color="black", linestyle=":", linewidth=1.2, label="dense")
        for i, rule in enumerate(rules):
            pts = sorted((s, c["accuracy"]) for (n, r, s), c in cells.items() if n == length and r == rule)
            scope = rule.rsplit("-", 1)[-1]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3,
                    color="black" if rule == "uniform" else f"C{i // 2}",
                    linestyle=styles.get(scope, "-"), label=rule)
        ax.set_title(f"prompt length {length}", fontsize=10)
        ax.set_xlabel("select (target keep ratio)")
        ax.set_ylabel("accuracy")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    kinds = sorted({r["kind"] for r in records})
    fig.suptitle(f"retrieval accuracy vs select ({', '.join(kinds)} pooled)", fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    return path


def _cell(acc: float | None, keep: float | None) -> str:
    if acc is None:
        return "-"
    return f"{acc:.3f}" + ("" if keep is None else f" ({keep:.3f})")


def accuracy_table(records: Sequence[dict[str, Any]]) -> str:
    """Markdown: per length, rows = rules, columns = selects, cells "accuracy (keep)"; a block
    per kind and one pooled over the kinds."""
    out = []
    rules = ["dense", *_rules(records)]
    for length in sorted({r["length"] for r in records}):
        rows = [r for r in records if r["length"] == length]
        selects = sorted({float(r["select"]) for r in rows if r["rule"] != "dense"})
        header = "| rule | " + " | ".join(f"{s:g}" for s in selects) + " |"
        line = "|---|" + "---|" * len(selects)
        groups = {"pooled": {(r, s): c for (n, r, s), c in pooled(rows).items()}}
        for kind in sorted({r["kind"] for r in rows}):
            groups[kind] = {(r["rule"], float(r["select"])): r for r in rows if r["kind"] == kind}
        for name, cells in groups.items():
            n = max((c["n"] for c in cells.values()), default=0)
            out += [f"**{length} tokens, {name}** (items per cell: {n}; accuracy (realised keep "
                    "ratio); dense in every column)", "", header, line]
            for rule in rules:
                if rule == "dense":
                    d = cells.get(("dense", 1.0))
                    vals = [_cell(d["accuracy"], d["keep"]) if d else "-"] * len(selects)
                else:
                    vals = [_cell(cells[(rule, s)]["accuracy"], cells[(rule, s)]["keep"])
                            if (rule, s) in cells else "-" for s in selects]
                out.append(f"| {rule} | " + " | ".join(vals) + " |")
            out.append("")
    return "\n".join(out)


def heads_table(records: Sequence[dict[str, Any]]) -> str:
    """Markdown: per estimator, Spearman with the needle mass and the top heads."""
    ranks = [r for r in records if r.get("record") == "head_ranking"]
    if not ranks:
        return ""
    out = ["| length | estimator | Spearman (query heads) | Spearman (KV heads) | top-k overlap "
           "with needle-mass top-k | top heads (layer.head: needle mass) |", "|---|---|---|---|---|---|"]
    for r in ranks:
        tops = ", ".join(f"{h['layer']}.{h['head']}: {h['needle_mass']:.2f}" for h in r["top_heads"])
        sp = "-" if r["spearman"] is None else f"{r['spearman']:.2f}"
        spk = "-" if r["spearman_kv"] is None else f"{r['spearman_kv']:.2f}"
        out.append(f"| {r['length']} | {r['estimator']} | {sp} | {spk} | "
                   f"{r['top_k_overlap']}/{r['top_k']} | {tops} |")
    return "\n".join(out) + "\n"


def prune_table(records: Sequence[dict[str, Any]]) -> str:
    """Markdown: accuracy (pooled over kinds) after pruning, per estimator and selection, under
    the unpruned model's on the same items."""
    if not records:
        return ""
    groups: dict[tuple[int, str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        groups[(r["length"], r["estimator"], r["which"])].append(r)
    out = ["| length | heads removed | selection | items | accuracy |", "|---|---|---|---|---|"]
    order = {"none": 0, "most": 1, "least": 2, "random": 3}
    for (length, est, which), rows in sorted(groups.items(),
                                             key=lambda g: (g[0][0], order[g[0][2]], g[0][1])):
        n = sum(r["n"] for r in rows)
        acc = sum(r["accuracy"] * r["n"] for r in rows) / n
        seeds = len({r["seed"] for r in rows})
        label = {"none": "none (dense baseline)",
                 "random": f"random ({seeds} seeds, mean)"}.get(which, f"{which} ({est})")
        removed = f"{rows[0]['n_pruned']} ({rows[0]['fraction']:g})" if which != "none" else "0"
        out.append(f"| {length} | {removed} | {label} | {n} | {acc:.3f} |")
    return "\n".join(out) + "\n"


def write_report(directory: Path) -> list[Path]:
    """Write ``accuracy.png`` (when there are accuracy records) and ``fidelity_tables.md``."""
    acc = read_records(directory / "accuracy.jsonl")
    heads = read_records(directory / "heads.jsonl")
    prune = read_records(directory / "prune.jsonl")
    written = []
    if acc:
        written.append(plot_accuracy(acc, directory / "accuracy.png"))
    commands = sorted({r["command"] for r in [*acc, *heads, *prune]})
    prov = (acc or heads or prune or [{}])[-1]
    parts = ["## Retrieval task accuracy vs select", "",
             f"Device {prov.get('device')}, torch {prov.get('torch')}, commit {prov.get('commit')}, "
             f"{prov.get('date')}. Command(s):", "", *[f"    {c}" for c in commands], "",
             accuracy_table(acc), "## Heads: importance vs attention mass on the needle", "",
             heads_table(heads), "## Head pruning on the task", "", prune_table(prune)]
    path = directory / "fidelity_tables.md"
    write_text(path, "\n".join(parts))
    return [*written, path]


if __name__ == "__main__":
    for p in write_report(Path(sys.argv[1])):
        print(p)
