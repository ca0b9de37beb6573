"""The tables of docs/importance.md from the records of `scripts/importance_study.sh`.

    python scripts/importance_study_report.py DIR [--uniform FIDELITY.json]

DIR holds the study's JSON outputs; ``--uniform`` is an `adllm eval fidelity --json` record whose
uniform and (entropy-)adaptive rows were measured with the same settings (default:
benchmarks/results/fidelity_cpu_bundled/fidelity_cpu.json), shown beside the HeadIG rows.
Prints markdown on stdout.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RATIOS = ("0.15", "0.5", "0.9")


def load(directory: Path, name: str) -> dict | None:
    path = directory / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def pruning(directory: Path) -> list[str]:
    lines = ["| pruned heads | most important | least important | random (mean ± std) |",
             "|---|---|---|---|"]
    cases = [("prune_headig_s0_0.0625", "4 of 64 (6.25%)"), ("prune_headig_s0_0.125", "8 of 64 (12.5%)"),
             ("prune_headig_s0_0.25", "16 of 64 (25%)"),
             ("prune_headig_s0_0.25_per_layer", "16 of 64, 2 per layer")]
    for name, label in cases:
        r = load(directory, name)
        if r is None:
            continue
        m = r["summary"]["nll_mean"]
        rnd = f"{m['random_mean']:.3f} ± {m['random_std']:.3f}" if m.get("random_std") is not None else "-"
        lines.append(f"| {label} | {m['most']:.3f} | {m['least']:.3f} | {rnd} |")
    return lines


def per_ratio(directory: Path, name: str) -> str:
    r = load(directory, name)
    if r is None:
        return ""
    s = r["summary"]
    cells = []
    for ratio in RATIOS:
        c = s[f"nll@{ratio}"]
        rnd = f", random {c['random_mean']:.3f} ± {c['random_std']:.3f}" if "random_mean" in c else ""
        cells.append(f"r = {ratio}: baseline {c['baseline']:.3f}, most {c['most']:.3f}, "
                     f"least {c['least']:.3f}{rnd}")
    return f"{name}: " + "; ".join(cells)


#: How the stability table names the study's importance files.
LABELS = {"headig_s0": "HeadIG, all four works, seed 0",
          "headig_s1": "HeadIG, all four works, seed 1 (other masks and STP thresholds)",
          "headig_A": "HeadIG, Julius Caesar + Much Ado", "headig_B": "HeadIG, Richard II + Tempest",
          "entropy": "entropy", "coverage": "coverage"}


def stability(directory: Path) -> list[str]:
    lines = ["| A | B | Spearman | Pearson | top-16 overlap | bottom-16 overlap |",
             "|---|---|---|---|---|---|"]
    runs = directory / "runs.jsonl"
    order = [json.loads(line)["name"] for line in runs.read_text().splitlines()] if runs.is_file() else []
    paths = sorted(directory.glob("compare_*.json"),
                   key=lambda p: (order.index(p.stem) if p.stem in order else len(order), p.name))
    for path in paths:
        r = json.loads(path.read_text())
        a, b = (LABELS.get(Path(r[k]).stem, Path(r[k]).stem) for k in ("a", "b"))
        k = r["top_k"]
        lines.append(f"| {a} | {b} | {r['spearman']:.3f} | {r['pearson']:.3f} | "
                     f"{round(r['top_overlap'] * k)}/{k} | {round(r['bottom_overlap'] * k)}/{k} |")
    return lines


def fidelity(directory: Path, uniform: Path | None) -> list[str]:
    lines = ["| mode | select | keep | " + " | ".join(f"bpb@{r} (delta)" for r in RATIOS)
             + " | agree | KL commit |", "|---" * 8 + "|"]
    headig = load(directory, "fidelity_headig")
    rows = [("HeadIG adaptive", row) for row in (headig or {"rows": []})["rows"]
            if row["mode"] == "adaptive"]
    selects = {row["select"] for _, row in rows}  # the other rows at the same selects only
    if uniform is not None and uniform.is_file():
        for row in json.loads(uniform.read_text())["rows"]:
            name = {"adaptive": "entropy adaptive"}.get(row["mode"], row["mode"])
            if row["mode"] == "dense" or row["select"] in selects:
                rows.append((name, row))
    order = {"dense": 0, "uniform": 1, "HeadIG adaptive": 2, "entropy adaptive": 3}
    for name, row in sorted(rows, key=lambda nr: (nr[1]["select"] if nr[0] != "dense" else 0,
                                                   order[nr[0]])):
        nll = " | ".join(f"{n['bits']:.4f} ({n['delta']:+.4f})" for n in row["nll"])
        lines.append(f"| {name} | {row['select']:.2f} | {row['keep_nll']:.3f} | {nll} | "
                     f"{row['token_agreement']:.3f} | {row['kl_commit']:.3g} |")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("directory", type=Path)
    p.add_argument("--uniform", type=Path,
                   default=Path("benchmarks/results/fidelity_cpu_bundled/fidelity_cpu.json"))
    args = p.parse_args()
    d = args.directory
    for r in sorted(d.glob("headig_*.json")) + [d / "entropy.json", d / "coverage.json"]:
        if r.is_file():
            meta = json.loads(r.read_text())["metadata"]
            gap = meta.get("completeness", {})
            print(f"{r.stem}: n {meta['data']['n']}, completeness {json.dumps(gap)}")
    print("\n## Pruning (mean bits per byte over mask ratios 0.15 / 0.5 / 0.9)\n")
    print("\n".join(pruning(d)))
    for name in ("prune_headig_s0_0.25", "prune_entropy_0.25"):
        print("\n" + per_ratio(d, name))
    print("\n## Rank stability\n")
    print("\n".join(stability(d)))
    print("\n## Adaptive (HeadIG, entropy) vs uniform at equal select\n")
    print("\n".join(fidelity(d, args.uniform)))


if __name__ == "__main__":
    main()
