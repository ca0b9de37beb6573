"""Reports of benchmark records: text tables, the speedup plot and medians per mode.

Kept out of the sweep (which only measures): the records are plain dicts (``kind`` = ``kernel``,
``e2e``, ``compile``, ``error`` or ``skipped``), so these read records from a file as well.
"""

from __future__ import annotations

import math
import statistics
from typing import Any


def table(records: list[dict[str, Any]]) -> str:
    """Short text tables: kernel speedups and end-to-end speedups."""
    lines = []
    kern = [r for r in records if r.get("kind") == "kernel"]
    if kern:
        lines.append("kernel (one layer)   len    dense(ms,backend)   mode              ms     "
                     "speedup  ideal  ach/ideal  plan_build(ms) fused")
        for r in kern:
            lines.append(
                f"{r['family']:<20} {r['seq_len']:>6} {r['dense_ms']:>9.2f} {r['dense_backend']:<9} "
                f"{_mode_label(r):<16} {r['ms']:>8.2f} {r['speedup']:>7.2f}x "
                f"{_f(r.get('ideal_speedup')):>6} {_f(r.get('achieved_over_ideal')):>9} "
                f"{_f(r.get('plan_build_ms'), 1):>10} {_f(r.get('plan_build_fused_ms'), 1):>6}")
    e2e = [r for r in records if r.get("kind") == "e2e" and "cache" not in r]
    if e2e:
        lines.append("")
        lines.append("end-to-end           prompt  mode      run   total(s)  speedup  ideal  "
                     "ach/ideal  plan/dense_step  peak(GB)  peak/dense  keep")
        for r in e2e:
            keep = r.get("sparse_stats", {}).get("realized_keep_ratio")
            lines.append(
                f"{r['family']:<20} {r['prompt_len']:>6}  {r['mode']:<9} {r.get('run', ''):<5} "
                f"{r['total_s']:>8.2f}  {_f(r.get('speedup')):>6}x {_f(r.get('ideal_speedup')):>6} "
                f"{_f(r.get('achieved_over_ideal')):>9} {_f(r.get('plan_over_dense_step')):>15} "
                f"{_f(r.get('peak_memory_gb'), 1):>8} {_f(r.get('peak_over_dense'), 3):>10} "
                f"{_f(keep, 3):>5}")
    lines += _cache_table([r for r in records if r.get("kind") == "e2e" and "cache" in r])
    lines += _decode_table([r for r in records if r.get("kind") == "decode"])
    comp = [r for r in records if r.get("kind") == "compile"]
    for r in comp:
        lines.append(f"one-time compile ({r['family']}): {r['compile_s']:.1f} s")
    for r in records:
        if r.get("kind") == "error":
            lines.append(f"ERROR {r['family']} {r['seq_len']}: {r['error']}")
        if r.get("kind") == "skipped":
            lines.append(f"skipped {r['family']} {r.get('prompt_len')} {r.get('mode', 'all')} "
                         f"{r.get('run', '')}: {r['reason']}")
    return "\n".join(lines)


def _cache_table(rows: list[dict[str, Any]]) -> list[str]:
    """End-to-end runs of the cache protocol: speedups over dense without a cache and over dense
    with the same cache, tokens per forward, peak memory, and what ``auto`` decided."""
    if not rows:
        return []
    lines = ["", "cache protocol       prompt  cache   mode      backend    tok/fwd fwds  total(s) "
                 "vs-nocache  vs-cache  peak(GB) peak/nocache  ran (refresh/cached)"]
    for r in rows:
        sp = r.get("sparse_stats") or {}
        ran = f"{sp.get('backend', '-')}/{sp.get('cached_backend', '-')}" if sp else "-"
        lines.append(
            f"{r['family']:<20} {r['prompt_len']:>6}  {r['cache'] or 'none':<7} {r['mode']:<9} "
            f"{r.get('sparse_backend') or '-':<10} {r['tokens_per_forward']:>7.2f} "
            f"{r['forwards']:>4} {r['total_s']:>9.3f} "
            f"{_f(r.get('speedup_over_no_cache_dense')):>9}x "
            f"{_f(r.get('speedup_over_same_cache_dense')):>7}x "
            f"{_f(r.get('peak_memory_gb'), 1):>8} {_f(r.get('peak_over_no_cache_dense'), 3):>12}  "
            f"{ran}")
    return lines


def _decode_table(rows: list[dict[str, Any]]) -> list[str]:
    """Cached-step attention: sparse kernel vs the fastest dense SDPA, bandwidth."""
    if not rows:
        return []
    lines = ["", "cached step (GPU time)  keys  queries keep  kernel     ms   dense(ms,backend)  "
                 "speedup  ideal  GB/s  dense GB/s  copy GB/s | one call: ms  dense  speedup"]
    for r in rows:
        lines.append(
            f"{r['family']:<20} {r['keys']:>6} {r['queries']:>5} {r['keep_ratio']:>6.3f} "
            f"{r['kernel']:<9} {r['ms']:>7.3f} {r['dense_ms']:>8.3f} {r['dense_backend']:<9} "
            f"{r['speedup']:>6.2f}x {r['ideal_speedup']:>5.2f} {r['gbs']:>6.1f} "
            f"{r['dense_gbs']:>10.1f} {r['copy_rate_gbs']:>10.1f} | {_f(r.get('call_ms'), 3):>7} "
            f"{_f(r.get('dense_call_ms'), 3):>6} {_f(r.get('call_speedup'))}x")
    return lines


def _f(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def plot(records: list[dict[str, Any]], path: str) -> None:
    """PNG of speedup over the fastest dense SDPA vs sequence length (kernel and end-to-end)."""
    # Figure without pyplot: no process-wide backend switch in library code.
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2))
    axes = fig.subplots(1, 2)
    for ax, kind, xkey, title in ((axes[0], "kernel", "seq_len", "attention kernel (one layer)"),
                                  (axes[1], "e2e", "prompt_len", "end-to-end generation")):
        rows = [r for r in records if r.get("kind") == kind and r.get("run", "warm") == "warm"
                and r.get("speedup") is not None
                and not (r.get("mode") == "dense" and not r.get("cache"))]
        for n, key in enumerate(sorted({(r["family"], _mode_label(r)) for r in rows})):
            pts = sorted((r[xkey], r["speedup"]) for r in rows
                         if (r["family"], _mode_label(r)) == key)
            style = ":" if "all_blocks" in key[1] else "--" if "flex" in key[1] else "-"
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ls=style,
                    color=colormaps["tab20"](n % 20), label=f"{key[0]} {key[1]}")
        ax.axhline(1.0, color="gray", lw=0.8, ls="--")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("prompt tokens" if kind == "e2e" else "sequence length")
        ax.set_ylabel("speedup over fastest dense SDPA")
        ax.set_title(title)
        ax.legend(fontsize=7)
    _save(fig, records, path)


def plot_cache(records: list[dict[str, Any]], path: str) -> None:
    """PNG of the cache protocol (issue 14): left, the cached-step kernel's speedup over the
    fastest dense SDPA vs cached keys (GPU time, per family and query window); right, end-to-end
    speedup over dense without a cache vs prompt length (one token per forward), per family,
    cache mode and attention; runs with ``cuda_graphs`` off are left out."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2))
    left, right = fig.subplots(1, 2)
    decode = [r for r in records if r.get("kind") == "decode"]
    for n, key in enumerate(sorted({(r["family"], r["queries"]) for r in decode})):
        pts = sorted((r["keys"], r["speedup"]) for r in decode
                     if (r["family"], r["queries"]) == key)
        left.plot(*zip(*pts, strict=True), marker="o", color=colormaps["tab10"](n),
                  label=f"{key[0]}, {key[1]} queries")
    keeps = sorted({round(r["keep_ratio"], 1) for r in decode})
    left.set_title(f"cached-step attention, keep {', '.join(map(str, keeps))}")
    left.set_xlabel("cached keys")
    # A sweep run without its no-cache baseline (64k: 80 s per family) is set against the
    # baseline record of another sweep of the same records (same family, prompt and schedule).
    base = {(r["family"], r["prompt_len"], r.get("tokens_per_step")): r["total_s"]
            for r in records if r.get("kind") == "e2e" and not r.get("cache")
            and r.get("mode") == "dense" and r.get("total_s")}

    def speedup(r: dict[str, Any]) -> float | None:
        ref = base.get((r["family"], r["prompt_len"], r.get("tokens_per_step")))
        return r.get("speedup") or (ref / r["total_s"] if ref and r.get("total_s") else None)

    e2e = [r for r in records if r.get("kind") == "e2e" and r.get("cache")
           and r.get("tokens_per_step") == 1 and speedup(r) is not None
           and r.get("sparse_backend") in (None, "auto") and r.get("cuda_graphs", True)]
    for n, key in enumerate(sorted({(r["family"], _mode_label(r)) for r in e2e})):
        pts = sorted((r["prompt_len"], speedup(r)) for r in e2e
                     if (r["family"], _mode_label(r)) == key)
        right.plot(*zip(*pts, strict=True), marker="o", color=colormaps["tab10"](n % 10),
                   ls="-" if key[0] == "llada" else "--", label=f"{key[0]} {key[1]}")
    shape = sorted({(r["n_layers"], r["gen_length"], r["select"]) for r in e2e})
    right.set_title("end to end, " + "; ".join(f"{n} layers, {g} tokens, select {sel}"
                                              for n, g, sel in shape) + ", one per forward")
    right.set_xlabel("prompt tokens")
    right.set_yscale("log")
    for ax, ylabel in ((left, "speedup over fastest dense SDPA"),
                       (right, "speedup over dense without a cache")):
        ax.axhline(1.0, color="gray", lw=0.8, ls="--")
        ax.set_xscale("log", base=2)
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=7)
    _save(fig, records, path)


def _save(fig: Any, records: list[dict[str, Any]], path: str) -> None:
    """Title the figure with the records' GPU, versions and commit, then write it."""
    env = next((r["env"] for r in records if "env" in r), {})
    fig.suptitle(f"{env.get('gpu')}, torch {env.get('torch')}, triton {env.get('triton')}, "
                 f"commit {env.get('git_commit')}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Median speedups per (kind, family, mode) for quick reading."""
    out: dict[str, Any] = {}
    for r in records:
        if r.get("speedup") is None:
            continue
        key = f"{r['kind']}/{r['family']}/{_mode_label(r)}"
        out.setdefault(key, []).append(r["speedup"])
    return {k: statistics.median(v) for k, v in out.items()}


def _mode_label(r: dict[str, Any]) -> str:
    """``uniform`` / ``adaptive`` with the backend when the record names one that is not in the
    mode already (``uniform [triton]``); dense and ``*_all_blocks`` as they are."""
    backend = r.get("backend")
    mode = r["mode"]
    if r.get("cache"):  # the cache protocol: dense/sparse under a cache, on a backend
        return f"{mode} +{r['cache']}" + (f" [{r['sparse_backend']}]" if r.get("sparse_backend")
                                          else "")
    if backend and r.get("kind") == "kernel" and not mode.startswith(backend):
        return f"{mode} [{backend}]"
    return mode
