"""``adllm importance show | compare | average | import``: read, compare and combine files.

``show`` summarises one file (optionally a heatmap), ``compare`` measures the rank agreement of
two (optionally a side-by-side and difference heatmap), ``average`` writes the head-wise mean
of several, ``import`` converts an upstream ``.pt`` file. Outputs are validated before any work.

Heatmaps: Ly layers (rows) x H heads (columns), NaN (unattributed) heads blank, signed scores
on a diverging map centred on 0. The comparison's third panel is ``z(B) - z(A)``, each file
standardised over its finite heads, so estimators of very different scales compare; red heads
rank higher in B than in A. Images are written atomically.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adaptive_dllm._io import atomic_write, check_output_path, dumps_json
from adaptive_dllm.cli.arguments import out_stream, positive_int
from adaptive_dllm.cli.plots import check_plot
from adaptive_dllm.errors import AdllmError

if TYPE_CHECKING:  # numpy is imported when a plot is drawn, not at CLI start-up
    import numpy as np

SHOW_EPILOG = """\
examples:
  adllm importance show headig.safetensors
  adllm importance show headig.safetensors --top 10 --plot headig.png
  adllm importance show headig.safetensors --json
"""

COMPARE_EPILOG = """\
Spearman and Pearson correlation over all heads (NaN heads left out), and the overlap of the
top-k and bottom-k heads (chance level k/n is printed alongside). --plot draws A, B and their
difference z(B) - z(A) (each file standardised, so different estimators compare).

examples:
  adllm importance compare headig_seed0.safetensors headig_seed1.safetensors --plot seeds.png
  adllm importance compare headig.safetensors entropy.safetensors --top-k 8 --json
"""

AVERAGE_EPILOG = """\
The head-wise mean of several files of the same shape and head kind (e.g. HeadIG seeds or data
splits); NaN heads are left out of a head's mean. The result lists its sources.

examples:
  adllm importance average headig_s0.safetensors headig_s1.safetensors --out headig_mean.safetensors
"""

IMPORT_EPILOG = """\
Upstream HeadIG files integrate the gradient of the loss, so useful heads are negative: import
them with --negate. Files that already say higher = more important (*_neg) take --no-negate.

examples:
  adllm importance import head_importance.pt --negate --family llada --out llada.safetensors
  adllm importance import dream_neg.pt --no-negate --family dream --kv-heads 4 --out dream.safetensors
"""


#: Heatmaps are written as PNG only.
PLOT_FORMATS = ("png",)


def check_artifact_out(path: Path, *, flag: str = "--out",
                       inputs: Iterable[str | Path | None] = ()) -> Path:
    """An importance file to write: ``.safetensors``, a writable place, not an input."""
    if path.suffix != ".safetensors":
        raise AdllmError(f"{flag} {path} must end in .safetensors")
    return check_output_path(path, flag=flag, inputs=inputs)


def _parser(sub: argparse._SubParsersAction, name: str, help_text: str, description: str,
            epilog: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help_text, description=description, epilog=epilog,
                          formatter_class=argparse.RawDescriptionHelpFormatter)


# ---------------------------------------------------------------------------------------------
# show


def register_show(sub: argparse._SubParsersAction) -> None:
    p = _parser(sub, "show", "summarise an importance file (top/bottom heads, heatmap)",
                "Summary, per-layer means, top and bottom heads, optional heatmap.", SHOW_EPILOG)
    p.add_argument("file", type=Path)
    p.add_argument("--top", type=positive_int, default=5, help="heads listed at each end (default 5)")
    p.add_argument("--plot", type=Path, default=None, metavar="FILE.png", help="write a heatmap")
    p.add_argument("--json", action="store_true")
    p.set_defaults(importance_func=run_show)


def summarise(imp: Any, top: int) -> dict[str, Any]:
    """Statistics of one file: spread, layer means, top and bottom heads (NaN heads left out)."""
    import torch

    s = imp.scores
    finite = torch.isfinite(s)
    vals = s[finite].double()
    flat = torch.where(finite, s, torch.tensor(float("nan"))).flatten()
    order = [int(i) for i in flat.double().nan_to_num(-float("inf")).argsort(descending=True, stable=True)
             if finite.flatten()[i]]
    heads = [(i // imp.n_heads, i % imp.n_heads, float(flat[i])) for i in order]
    layer_means = [float(s[layer][finite[layer]].double().mean()) if finite[layer].any() else None
                   for layer in range(imp.n_layers)]
    m = imp.metadata
    return {
        "file": None, "estimator": m.get("estimator"), "family": m.get("family"),
        "head_kind": imp.head_kind, "shape": [imp.n_layers, imp.n_heads], "seed": m.get("seed"),
        "created": m.get("created"), "nan": int(s.isnan().sum()), "inf": int(s.isinf().sum()),
        "mean": float(vals.mean()), "std": float(vals.std()) if vals.numel() > 1 else 0.0,
        "min": float(vals.min()), "max": float(vals.max()),
        "positive": int((vals > 0).sum()), "negative": int((vals < 0).sum()),
        "layer_means": layer_means,
        "top": [list(h) for h in heads[:top]], "bottom": [list(h) for h in heads[::-1][:top]],
    }


def run_show(args: argparse.Namespace) -> int:
    from adaptive_dllm.importance import HeadImportance

    plot = check_plot(args.plot, inputs=[args.file], formats=PLOT_FORMATS)
    imp = HeadImportance.load(args.file)
    info = summarise(imp, args.top)
    info["file"] = str(args.file)
    if plot is not None:
        info["plot"] = str(write_heatmap(imp, plot))
    if args.json:
        print(dumps_json({**info, "metadata": imp.metadata}, indent=1))
        return 0
    print(f"{args.file}: {info['estimator']} ({info['family']}), {imp.n_layers} layers x "
          f"{imp.n_heads} {imp.head_kind} heads, seed {info['seed']}, created {info['created']}")
    print(f"scores: mean {info['mean']:.4g}  std {info['std']:.4g}  min {info['min']:.4g}  "
          f"max {info['max']:.4g}  ({info['positive']} positive, {info['negative']} negative, "
          f"{info['nan']} NaN" + (f", {info['inf']} Inf)" if info["inf"] else ")"))
    print("layer means: " + " ".join("nan" if v is None else f"{v:.3g}" for v in info["layer_means"]))
    for label in ("top", "bottom"):
        heads = ", ".join(f"L{layer}H{head} {v:.4g}" for layer, head, v in info[label])
        print(f"{label} {len(info[label])}: {heads}")
    settings = imp.metadata.get("settings") or {}
    if settings:
        print("settings: " + json.dumps(settings, sort_keys=True)[:400])
    if "plot" in info:
        print(f"heatmap written to {info['plot']}")
    return 0


# ---------------------------------------------------------------------------------------------
# compare


def register_compare(sub: argparse._SubParsersAction) -> None:
    p = _parser(sub, "compare", "rank agreement of two importance files",
                "Spearman / Pearson correlation and top-k overlap of two files.", COMPARE_EPILOG)
    p.add_argument("a", type=Path)
    p.add_argument("b", type=Path)
    p.add_argument("--top-k", type=positive_int, default=None, help="top/bottom set size (default: n/4)")
    p.add_argument("--plot", type=Path, default=None, metavar="FILE.png",
                   help="write A, B and their difference as heatmaps side by side")
    p.add_argument("--json", action="store_true")
    p.set_defaults(importance_func=run_compare)


def _fmt(x: float | None, spec: str) -> str:
    return "n/a" if x is None or x != x else format(x, spec)


def run_compare(args: argparse.Namespace) -> int:
    from adaptive_dllm.importance import HeadImportance
    from adaptive_dllm.importance.comparison import compare

    plot = check_plot(args.plot, inputs=[args.a, args.b], formats=PLOT_FORMATS)
    a, b = HeadImportance.load(args.a), HeadImportance.load(args.b)
    result = compare(a, b, top_k=args.top_k)
    if plot is not None:
        result["plot"] = str(write_comparison(a, b, plot, names=(args.a.name, args.b.name)))
    if args.json:  # a constant file has no correlation: null, never NaN
        print(dumps_json({"a": str(args.a), "b": str(args.b), **result}, indent=1))
        return 0
    print(f"A {args.a} ({a.metadata.get('estimator')})\nB {args.b} ({b.metadata.get('estimator')})")
    print(f"heads {result['n_heads']}  spearman {_fmt(result['spearman'], '.3f')}  "
          f"pearson {_fmt(result['pearson'], '.3f')}")
    print(f"top-{result['top_k']} overlap {result['top_overlap']:.2f}  bottom-{result['top_k']} overlap "
          f"{result['bottom_overlap']:.2f}  (chance {result['chance_overlap']:.2f})")
    if plot is not None:
        print(f"heatmaps written to {plot}")
    return 0


# ---------------------------------------------------------------------------------------------
# average


def register_average(sub: argparse._SubParsersAction) -> None:
    p = _parser(sub, "average", "head-wise mean of several importance files",
                "Average importance files of one model and head kind.", AVERAGE_EPILOG)
    p.add_argument("files", type=Path, nargs="+", metavar="FILE")
    p.add_argument("--out", required=True, type=Path, help="output .safetensors file")
    p.add_argument("--json", action="store_true", help="print the metadata as JSON")
    p.set_defaults(importance_func=run_average)


def run_average(args: argparse.Namespace) -> int:
    from adaptive_dllm.importance import HeadImportance
    from adaptive_dllm.importance.comparison import average_importance

    check_artifact_out(args.out, inputs=args.files)
    items = [HeadImportance.load(path) for path in args.files]
    imp = average_importance(items, sources=[str(path) for path in args.files])
    path = imp.save(args.out)
    print(f"wrote {path}: mean of {len(items)} files ({imp.n_layers} layers x {imp.n_heads} "
          f"{imp.head_kind} heads)", file=out_stream(args))
    if args.json:
        print(dumps_json({"path": str(path), "metadata": imp.metadata}, indent=1))
    return 0


# ---------------------------------------------------------------------------------------------
# import


def register_import(sub: argparse._SubParsersAction) -> None:
    p = _parser(sub, "import", "convert an upstream .pt importance file",
                "Convert an upstream torch importance file to .safetensors.", IMPORT_EPILOG)
    p.add_argument("file", type=Path)
    p.add_argument("--out", required=True, type=Path, help="output .safetensors file")
    p.add_argument("--negate", action=argparse.BooleanOptionalAction, required=True,
                   help="negate the scores (required choice: upstream HeadIG needs --negate)")
    p.add_argument("--family", default="unknown", choices=("llada", "dream", "unknown"),
                   help="the model family the scores are of (default unknown)")
    p.add_argument("--head-kind", default="query", choices=("query", "kv"))
    p.add_argument("--kv-heads", type=positive_int, default=None, help="KV heads per layer, if known")
    p.add_argument("--trusted", action="store_true",
                   help="allow arbitrary pickled objects (only for files you trust)")
    p.set_defaults(importance_func=run_import)


def run_import(args: argparse.Namespace) -> int:
    from adaptive_dllm.importance import HeadImportance

    check_artifact_out(args.out, inputs=[args.file])
    imp = HeadImportance.from_upstream(args.file, negate=args.negate, family=args.family,
                                       head_kind=args.head_kind, n_kv_heads=args.kv_heads,
                                       trusted=args.trusted)
    path = imp.save(args.out)
    print(f"wrote {path} ({imp.n_layers} layers x {imp.n_heads} {imp.head_kind} heads, "
          f"{'negated' if args.negate else 'not negated'})")
    return 0


# ---------------------------------------------------------------------------------------------
# heatmaps


def write_heatmap(imp: Any, path: Path) -> Path:
    """One file's scores as a layer x head heatmap (PNG)."""
    # Lazy: matplotlib is slow to import; Figure without pyplot needs no backend.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(4.0, 0.35 * imp.n_heads + 2), max(3.0, 0.3 * imp.n_layers + 1.5)))
    ax = fig.subplots()
    _panel(fig, ax, imp.scores.double().numpy(),
           f"{imp.metadata.get('estimator')} importance (higher = more important)", imp.head_kind)
    _save(fig, path)
    return path


def write_comparison(a: Any, b: Any, path: Path, *, names: tuple[str, str]) -> Path:
    """A, B and z(B) - z(A) side by side (PNG); ``a`` and ``b`` have the same shape."""
    from matplotlib.figure import Figure

    sa, sb = a.scores.double().numpy(), b.scores.double().numpy()
    width = max(4.0, 0.3 * a.n_heads + 2)
    fig = Figure(figsize=(3 * width, max(3.0, 0.3 * a.n_layers + 1.5)))
    axes = fig.subplots(1, 3)
    _panel(fig, axes[0], sa, f"A: {names[0]} ({a.metadata.get('estimator')})", a.head_kind)
    _panel(fig, axes[1], sb, f"B: {names[1]} ({b.metadata.get('estimator')})", b.head_kind)
    _panel(fig, axes[2], standardise(sb) - standardise(sa), "B - A (z-scores)", a.head_kind,
           signed=True)
    _save(fig, path)
    return path


def standardise(scores: np.ndarray) -> np.ndarray:
    """(scores - mean) / std over the finite entries; NaN stays NaN; constant -> zeros."""
    import numpy as np

    finite = scores[np.isfinite(scores)]
    std = float(finite.std()) if finite.size > 1 else 0.0
    centred = scores - (float(finite.mean()) if finite.size else 0.0)
    return centred / std if std > 0 else centred * 0.0


def _panel(fig: Any, ax: Any, scores: np.ndarray, title: str, head_kind: str, *,
           signed: bool | None = None) -> None:
    import numpy as np

    finite = scores[np.isfinite(scores)]
    if signed is None:
        signed = bool((finite < 0).any())
    if signed:
        bound = float(np.abs(finite).max()) if finite.size else 1.0
        image = ax.imshow(scores, cmap="RdBu_r", vmin=-(bound or 1.0), vmax=bound or 1.0,
                          aspect="auto")
    else:
        image = ax.imshow(scores, cmap="viridis", aspect="auto")
    ax.set_xlabel(f"{head_kind} head")
    ax.set_ylabel("layer")
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax)


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    with atomic_write(path, "wb") as handle:
        fig.savefig(handle, dpi=120, format=path.suffix.lstrip(".").lower())
