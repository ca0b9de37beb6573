"""Presentation of a fidelity report: plain-text and markdown tables, and a PNG plot.

Every function takes the report as a dict (:meth:`~adaptive_dllm.evaluation.fidelity.
FidelityReport.to_dict`), so a saved ``--json`` record can be rendered again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from adaptive_dllm.errors import AdllmError

__all__ = ["format_markdown", "format_table", "plot_fidelity", "table_rows"]

def table_rows(report: dict[str, Any]) -> list[list[str]]:
    """Header plus one row of cells per (mode, select) of a report dict (:meth:`FidelityReport.to_dict`)."""
    ratios = report["settings"]["mask_ratios"]
    head = ["mode", "select", "keep nll"] + [f"bpb@{r:g} (delta)" for r in ratios]
    lines = [head + ["agree", "KL final", "KL commit", "keep gen"]]
    for r in report["rows"]:
        cells = [r["mode"], f"{r['select']:.2f}", _num(r["keep_nll"], 3)]
        for j in range(len(ratios)):
            if r["nll"] is None:
                cells.append("-")
            else:
                e = r["nll"][j]
                delta = "" if r["mode"] == "dense" else f" ({e['delta']:+.4f})"
                cells.append(f"{e['bits']:.4f}{delta}")
        cells += [_num(r["token_agreement"], 3), _num(r["kl_final"], 4, "g"),
                  _num(r["kl_commit"], 4, "g"), _num(r["keep_gen"], 3)]
        lines.append(cells)
    return lines


def format_table(report: dict[str, Any]) -> str:
    """A plain-text table of a report dict (:meth:`FidelityReport.to_dict`)."""
    lines = table_rows(report)
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return "\n".join("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in
                               enumerate(zip(line, widths, strict=True))) for line in lines)


def format_markdown(report: dict[str, Any]) -> str:
    """The same table as GitHub markdown (for docs)."""
    lines = table_rows(report)
    out = ["| " + " | ".join(lines[0]) + " |", "|" + "---|" * len(lines[0])]
    return "\n".join(out + ["| " + " | ".join(line) + " |" for line in lines[1:]])


def _num(x: float | None, digits: int, kind: str = "f") -> str:
    return "-" if x is None else f"{x:.{digits}{kind}}"


def plot_fidelity(report: dict[str, Any], path: str | Path) -> Path:
    """PNG of quality vs select per mode: NLL per mask ratio, token agreement, KL (dense dashed).

    Raises:
        AdllmError: the file cannot be written.
    """
    # A Figure of its own: no pyplot state, no process-wide backend switch.
    from matplotlib.figure import Figure

    rows = report["rows"]
    dense = rows[0]
    ratios = report["settings"]["mask_ratios"]
    panels: list[tuple[str, Any]] = []
    if dense["nll"] is not None:
        panels += [(f"masked NLL, r={r:g} (bits/token)", lambda row, j=j: row["nll"][j]["bits"])
                   for j, r in enumerate(ratios)]
    if dense["token_agreement"] is not None:
        panels += [("token agreement with dense", lambda row: row["token_agreement"]),
                   ("KL(dense || sparse), nats", lambda row: row["kl_final"])]
    fig = Figure(figsize=(3.6 * len(panels), 3.4))
    axes = fig.subplots(1, len(panels), squeeze=False)
    modes = [m for m in dict.fromkeys(r["mode"] for r in rows) if m != "dense"]
    colors = {m: f"C{i}" for i, m in enumerate(modes)}
    for ax, (title, get) in zip(axes[0], panels, strict=True):
        ax.axhline(get(dense), color="black", linestyle="--", linewidth=1, label="dense")
        for mode in modes:
            pts = sorted((r["select"], get(r)) for r in rows if r["mode"] == mode)
            kl = title.startswith("KL")
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", color=colors[mode],
                    label=f"{mode} (final step)" if kl else mode)
            if kl:
                pts = sorted((r["select"], r["kl_commit"]) for r in rows if r["mode"] == mode)
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", linestyle=":",
                        color=colors[mode], label=f"{mode} (commit step)")
                ax.legend(fontsize=7)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("select (target keep ratio)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    s = report["settings"]
    fig.suptitle(f"fidelity to dense: block {s['block_size']}, skip {s['skip']:g}, "
                 f"backend {report['backend']}", fontsize=10)
    fig.tight_layout()
    out = Path(path)
    try:
        fig.savefig(out, dpi=120)
    except OSError as err:
        raise AdllmError(f"cannot write plot {str(out)!r} ({err})") from None
    return out
