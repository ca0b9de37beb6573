"""Benchmark sweeps: attention kernels and end-to-end generation, dense vs uniform vs adaptive.

Every measurement becomes one JSON record (``kind`` = ``kernel`` or ``e2e``, plus ``compile``
for the one-time compilation) carrying the environment (:func:`~adaptive_dllm.bench.timing.
environment`). Protocol (DESIGN §5): the dense baseline is the fastest dense SDPA backend measured
in the same process; warm-up runs are excluded; CUDA events; medians.

Models are random-weight :class:`~adaptive_dllm.models.transformer.Transformer` s at the real
LLaDA-8B / Dream-7B geometry (``GEOMETRIES``) with fewer layers (the per-layer ratio is what the
kernel sweep measures; end-to-end ratios then hold for that depth, the LM head included). Prompts
are random token ids: no tokenizer of the real models is available offline, and with random
weights the text does not change the work done.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import statistics
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch

from adaptive_dllm.bench.timing import environment, fastest_dense, sdpa_backend, time_fn
from adaptive_dllm.kernels.support import n_blocks
from adaptive_dllm.models.config import ModelConfig
from adaptive_dllm.sparsity.cost import CostModel

#: Real geometries (LLaDA-8B, Dream-v0-7B); ``tiny`` variants keep the ratios for CPU smoke runs.
GEOMETRIES: dict[str, dict[str, Any]] = {
    "llada": dict(family="llada", vocab_size=126464, hidden_size=4096, n_heads=32, n_kv_heads=32,
                  intermediate_size=12288, rope_theta=500000.0, norm_eps=1e-5,
                  mask_id=126336, eos_id=126081, pad_id=126081),
    "dream": dict(family="dream", vocab_size=152064, hidden_size=3584, n_heads=28, n_kv_heads=4,
                  intermediate_size=18944, rope_theta=1000000.0, norm_eps=1e-6, qkv_bias=True,
                  mask_id=151666, eos_id=151643, pad_id=151643),
}
TINY: dict[str, dict[str, Any]] = {
    "llada": dict(family="llada", vocab_size=128, hidden_size=64, n_heads=4, n_kv_heads=4,
                  intermediate_size=128, mask_id=126, eos_id=125, pad_id=125),
    "dream": dict(family="dream", vocab_size=160, hidden_size=64, n_heads=4, n_kv_heads=2,
                  intermediate_size=128, qkv_bias=True, mask_id=150, eos_id=148, pad_id=148),
}


@dataclasses.dataclass(frozen=True)
class SweepSettings:
    """What to run. Defaults: the issue's target setting (skip 0.2, select 0.3, 128 steps/tokens)."""

    families: tuple[str, ...] = ("llada", "dream")
    lengths: tuple[int, ...] = (4096, 8192, 16384, 32768, 65536)
    e2e_lengths: tuple[int, ...] = (4096, 16384, 65536)
    n_layers: int = 4
    select: float = 0.3
    skip: float = 0.2
    block_size: int = 128
    steps: int = 128
    gen_length: int = 128
    llada_block_length: int = 32
    repeats: int = 5
    modes: tuple[str, ...] = ("uniform", "adaptive")
    cold: bool = True
    tiny: bool = False
    device: str = "cuda"
    dtype: str = "bfloat16"
    deadline: float | None = None  # time.monotonic() after which no generation starts
    largest_modes: tuple[str, ...] | None = None  # sparse modes at the largest e2e length
    #: Sparse backends: the kernel sweep times each, end to end runs the first (CUDA only for
    #: "triton"; a CPU smoke run uses flex).
    backends: tuple[str, ...] = ("triton", "flex")

    def sparse_backends(self) -> tuple[str, ...]:
        """The backends this device can run, in order."""
        usable = tuple(b for b in self.backends if self.device == "cuda" or b != "triton")
        return usable or ("flex",)


def model_config(family: str, *, n_layers: int, max_seq_len: int, tiny: bool = False) -> ModelConfig:
    """ModelConfig of ``family``'s real (or tiny) geometry with ``n_layers`` layers."""
    geometry = (TINY if tiny else GEOMETRIES)[family]
    return ModelConfig(n_layers=n_layers, max_seq_len=max_seq_len, **geometry)


def random_model(config: ModelConfig, *, device: str, dtype: torch.dtype, seed: int = 0) -> Any:
    """A Transformer with random weights (normal, std 0.02; norms 1), built on ``device``."""
    from adaptive_dllm.models.transformer import Transformer

    torch.manual_seed(seed)
    with torch.device("meta"):
        model = Transformer(config)
    model = model.to_empty(device=device).to(dtype)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02)
    return model.eval().requires_grad_(False)


def random_importance(config: ModelConfig, *, seed: int = 0) -> Any:
    """Log-normal per-KV-head scores (a realistic spread of budgets) as a HeadImportance."""
    from adaptive_dllm.importance.artifact import HeadImportance

    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(config.n_layers, config.n_kv_heads, generator=g).exp()
    return HeadImportance(scores=scores, head_kind="kv",
                          metadata={"family": config.family, "estimator": "random (benchmark)",
                                    "n_heads": config.n_heads, "seed": seed})


def sparse_config(mode: str, config: ModelConfig, s: SweepSettings, *, backend: str | None = None,
                  select: float | None = None) -> Any:
    """The SparseConfig of a sweep run: ``mode`` uniform or adaptive (random importance) on
    ``backend`` (default: the settings' first usable sparse backend)."""
    from adaptive_dllm.sparsity.config import SparseConfig

    imp = random_importance(config) if mode == "adaptive" else None
    return SparseConfig(select=s.select if select is None else select, skip=s.skip,
                        block_size=s.block_size, importance=imp,
                        backend=backend or s.sparse_backends()[0])


# -- kernels ------------------------------------------------------------------------------------
def kernel_records(family: str, length: int, s: SweepSettings) -> list[dict[str, Any]]:
    """Per-layer attention at ``length`` tokens: fastest dense SDPA, flex sparse (uniform and
    adaptive), flex with every block kept (kernel efficiency), and the plan build."""
    from adaptive_dllm.attention.api import attend, get_backend
    from adaptive_dllm.attention.mass import block_mass
    from adaptive_dllm.attention.plan import build_plan

    dtype = getattr(torch, s.dtype)
    cfg = model_config(family, n_layers=1, max_seq_len=length, tiny=s.tiny)
    H, Hkv, D = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    g = torch.Generator(device=s.device).manual_seed(length)
    q = torch.randn(1, H, length, D, device=s.device, dtype=dtype, generator=g)
    k = torch.randn(1, Hkv, length, D, device=s.device, dtype=dtype, generator=g)
    v = torch.randn(1, Hkv, length, D, device=s.device, dtype=dtype, generator=g)
    reps = {"repeats": s.repeats}
    dense = fastest_dense(q, k, v, **reps)
    base = {"kind": "kernel", "family": family, "seq_len": length, "n_heads": H,
            "n_kv_heads": Hkv, "head_dim": D, "block_size": s.block_size, "select": s.select,
            "dense_backend": dense["best"], "dense_ms": dense["best_ms"],
            "dense_backends_ms": dense["backends"]}
    records = []
    n = n_blocks(length, s.block_size)
    full = build_plan(torch.zeros(1, Hkv, n, n, device=s.device),
                      torch.full((Hkv,), n), None, layer=0, block_size=s.block_size,
                      seq_len=length, prompt_blocks=n, group=H // Hkv)
    for backend in s.sparse_backends():
        impl = get_backend(backend)
        prepared = impl.prepare(full, H)  # once per plan, as a generation does
        t_full = time_fn(functools.partial(attend, q, k, v, plan=full, backend=impl,
                                           prepared=prepared), **reps)
        records.append({**base, "mode": f"{backend}_all_blocks", "backend": backend,
                        "ms": t_full["median_ms"], "speedup": dense["best_ms"] / t_full["median_ms"],
                        "keep_ratio": 1.0})
    del full
    t_exact = time_fn(lambda: block_mass(q, k, block_size=s.block_size), warmup=1,
                      repeats=max(1, s.repeats // 2))
    t_pooled = time_fn(lambda: block_mass(q, k, block_size=s.block_size, estimator="pooled"),
                       warmup=1, repeats=max(1, s.repeats // 2))
    t_twopass = None
    if q.is_cuda:
        from adaptive_dllm.kernels.block_mass import block_mass_triton

        t_twopass = time_fn(functools.partial(block_mass_triton, q, k, block_size=s.block_size,
                                              method="twopass"),
                            warmup=1, repeats=max(1, s.repeats // 2))["median_ms"]
    for mode in s.modes:
        sc = sparse_config(mode, cfg, s)

        def build(sc: Any = sc) -> Any:
            session = sc.new_session(cfg, s.steps, gen_length=s.gen_length)
            return session, session.build_plan(0, q, k, None)

        t_build = time_fn(build, warmup=1, repeats=max(1, s.repeats // 2))
        fused = _fused_build_ms(sc, cfg, q, k, v, s) if q.is_cuda else None
        session, plan = build()
        ratio = plan.keep_ratio()
        for backend in s.sparse_backends():
            impl = get_backend(backend)
            prepared = impl.prepare(plan, H)  # what a generation builds with the plan
            t = time_fn(functools.partial(attend, q, k, v, plan=plan, backend=impl,
                                          prepared=prepared), **reps)
            records.append({
                **base, "mode": mode, "backend": backend, "ms": t["median_ms"],
                "speedup": dense["best_ms"] / t["median_ms"], "keep_ratio": ratio,
                "ideal_speedup": 1.0 / ratio,
                "achieved_over_ideal": dense["best_ms"] / t["median_ms"] * ratio,
                "plan_build_ms": t_build["median_ms"], "scoring_exact_ms": t_exact["median_ms"],
                "scoring_pooled_ms": t_pooled["median_ms"], "scoring_twopass_ms": t_twopass,
                "fused_build_step_ms": fused,
                "plan_build_fused_ms": None if fused is None else fused - dense["best_ms"],
            })
        del session, plan
    return records


def _fused_build_ms(sc: Any, cfg: ModelConfig, q: torch.Tensor, k: torch.Tensor,
                    v: torch.Tensor, s: SweepSettings) -> float:
    """Median ms of one layer's build step as a generation runs it (the fused kernel: attention
    that also scores, then the plan). Its excess over the fastest dense attention is the plan
    build's cost."""
    def step() -> Any:
        session = sc.new_session(cfg, s.steps, gen_length=s.gen_length)
        out = session.build_step(0, q, k, v, None)
        if session.build_kernel_used != "fused":
            raise RuntimeError(f"the build step ran {session.build_kernel_used!r}, not fused")
        return out

    return time_fn(step, warmup=1, repeats=max(1, s.repeats // 2))["median_ms"]


# -- end to end ---------------------------------------------------------------------------------
def _generate(model: Any, ids: torch.Tensor, s: SweepSettings, *, sparse: Any = None,
              steps: int | None = None) -> dict[str, Any]:
    from adaptive_dllm.generation.api import generate

    opts: dict[str, Any] = {"steps": steps or s.steps, "gen_length": s.gen_length}
    if model.config.family == "llada":
        opts["block_length"] = min(s.llada_block_length, s.gen_length)
    if s.device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    out = generate(model, None, ids, sparse=sparse, **opts)
    stats = out.stats.to_dict()
    stats.pop("step_s", None)
    if s.device == "cuda":
        torch.cuda.synchronize()
        stats["peak_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
    stats["ids_head"] = out.ids[0, :8].tolist()
    return stats


def _dynamo_graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def warmup_compile(model: Any, s: SweepSettings, *, length: int = 2048) -> dict[str, Any]:
    """One short sparse generation that compiles the sparse backend's kernels (reported
    separately: the backend's compile log)."""
    from adaptive_dllm.attention.api import get_backend

    ids = torch.randint(0, min(1000, model.config.mask_id), (1, length), device=s.device)
    sc = sparse_config("uniform", model.config, s)
    backend = get_backend(sc.backend)
    before = len(backend.compile_log)
    steps = 4 if model.config.family == "llada" else 2
    stats = _generate(model, ids, s, sparse=sc, steps=steps)
    compiles = [dataclasses.asdict(c) for c in backend.compile_log[before:]]
    return {"kind": "compile", "family": model.config.family, "seq_len": length + s.gen_length,
            "compile_s": sum(c["seconds"] for c in compiles), "signatures": compiles,
            "warmup_total_s": stats["total_s"]}


def e2e_records(model: Any, length: int, s: SweepSettings, *, dense_backend: str | None,
                attn_ms_per_layer: float | None,
                estimate_s: float | None = None) -> list[dict[str, Any]]:
    """End-to-end generation at a ``length``-token prompt.

    Order: the first sparse mode *cold* (the first generation at this length in the process,
    before anything else touched this shape), a short dense warm-up, dense, then every sparse
    mode warm. ``estimate_s`` (a guess of one generation) guards the cold run's deadline.
    """
    config = model.config
    g = torch.Generator(device=s.device).manual_seed(length)
    ids = torch.randint(0, min(config.vocab_size, config.mask_id), (1, length), device=s.device,
                        generator=g)
    base = {"kind": "e2e", "family": config.family, "prompt_len": length,
            "seq_len": length + s.gen_length, "n_layers": config.n_layers, "steps": s.steps,
            "gen_length": s.gen_length, "select": s.select, "skip": s.skip,
            "block_size": s.block_size, "dense_backend": dense_backend}
    modes = s.modes
    if s.largest_modes is not None and length == max(s.e2e_lengths):
        modes = s.largest_modes
    if not _fits_deadline(s, 2 * (estimate_s or 0.0)):
        return [{**base, "kind": "skipped", "reason": f"deadline (~{estimate_s:.0f} s a run)"}]
    with sdpa_backend(dense_backend):
        cold = None
        if s.cold and modes:
            graphs = _dynamo_graphs()
            cold = (_generate(model, ids, s, sparse=sparse_config(modes[0], config, s)),
                    _dynamo_graphs() - graphs)
        warm_steps = 4 if config.family == "llada" else 2
        t0 = time.monotonic()
        _generate(model, ids, s, steps=warm_steps)  # cuDNN/cuBLAS plans for this shape
        estimate = (time.monotonic() - t0) / warm_steps * s.steps
        if not _fits_deadline(s, estimate):
            return [{**base, "kind": "skipped", "reason": f"deadline (dense ~{estimate:.0f} s)"}]
        dense = _generate(model, ids, s)
        records = [{**base, "mode": "dense", **_e2e_fields(dense)}]
        if cold is not None:
            records.append(_sparse_record(base, modes[0], "cold", cold[0], cold[1], dense, s,
                                          length, attn_ms_per_layer))
        for mode in modes:
            if not _fits_deadline(s, dense["total_s"]):
                records.append({**base, "kind": "skipped", "mode": mode, "run": "warm",
                                "reason": f"deadline (~{dense['total_s']:.0f} s)"})
                continue
            graphs = _dynamo_graphs()
            st = _generate(model, ids, s, sparse=sparse_config(mode, config, s))
            records.append(_sparse_record(base, mode, "warm", st, _dynamo_graphs() - graphs,
                                          dense, s, length, attn_ms_per_layer))
    return records


def _sparse_record(base: dict[str, Any], mode: str, run: str, st: dict[str, Any], new_graphs: int,
                   dense: dict[str, Any], s: SweepSettings, length: int,
                   attn_ms_per_layer: float | None) -> dict[str, Any]:
    sp = st["sparse"]
    dense_step = dense["step_median_s"]
    n_layers = base["n_layers"]
    auto = CostModel().decide(select=s.select, seq_len=length + s.gen_length,
                              device_type=s.device, sparse_steps=sp["sparse_steps"])
    rec = {**base, "mode": mode, "run": run, **_e2e_fields(st),
           "speedup": dense["total_s"] / st["total_s"], "new_graphs": new_graphs,
           "plan_build_s": sp["time_plan_s"], "dense_step_s": dense_step,
           "plan_over_dense_step": (sp["time_plan_s"] or 0) / dense_step,
           "peak_over_dense": st["peak_memory_gb"] / dense["peak_memory_gb"]
           if st.get("peak_memory_gb") and dense.get("peak_memory_gb") else None,
           "same_tokens_as_dense": st["ids_head"] == dense["ids_head"],
           "auto_decision": auto.backend, "auto_reason": auto.reason,
           "sparse_stats": sp}
    if attn_ms_per_layer is not None and sp["realized_keep_ratio"] is not None:
        ideal = _ideal_e2e(dense_step, attn_ms_per_layer / 1000 * n_layers,
                           sp["realized_keep_ratio"], sp["dense_steps"], sp["sparse_steps"])
        rec["ideal_speedup"] = ideal
        rec["achieved_over_ideal"] = rec["speedup"] / ideal
    return rec


def _fits_deadline(s: SweepSettings, seconds: float) -> bool:
    return s.deadline is None or time.monotonic() + seconds <= s.deadline


def _e2e_fields(stats: dict[str, Any]) -> dict[str, Any]:
    return {"total_s": stats["total_s"], "step_median_s": stats["step_median_s"],
            "tokens_per_s": stats["tokens_per_s"], "peak_memory_gb": stats.get("peak_memory_gb")}


def _ideal_e2e(dense_step: float, attention: float, keep: float, n_dense: int,
               n_sparse: int) -> float:
    """DESIGN §5 bound: dense_step / (linear + keep * attention) for the sparse steps."""
    linear = max(0.0, dense_step - attention)
    total = n_dense + n_sparse
    return total * dense_step / (n_dense * dense_step + n_sparse * (linear + keep * attention))


# -- driver -------------------------------------------------------------------------------------
def run_sweep(s: SweepSettings, *, what: Iterable[str] = ("kernel", "e2e"),
              emit: Callable[[dict[str, Any]], None] = lambda r: None) -> list[dict[str, Any]]:
    """Run the requested sweeps; ``emit`` receives every record as soon as it exists.

    Everything runs under ``torch.inference_mode()``, as generation does, so the kernels compiled
    for the kernel sweep are the ones generation reuses.
    """
    with torch.inference_mode():
        return _run_sweep(s, what=what, emit=emit)


def _run_sweep(s: SweepSettings, *, what: Iterable[str],
               emit: Callable[[dict[str, Any]], None]) -> list[dict[str, Any]]:
    what = tuple(what)
    env = environment()
    records: list[dict[str, Any]] = []

    def add(rec: dict[str, Any]) -> None:
        rec = {**rec, "env": env}
        records.append(rec)
        emit(rec)

    dense_at: dict[tuple[str, int], tuple[str, float]] = {}
    for family in s.families:
        if "kernel" in what:
            for length in s.lengths:
                case = functools.partial(kernel_records, family, length, s)
                for rec in _guarded(case, family, length):
                    add(rec)
                    if rec["kind"] == "kernel":
                        dense_at[(family, length)] = (rec["dense_backend"], rec["dense_ms"])
                _free()
    if "e2e" in what:
        top = max(s.e2e_lengths) + s.gen_length
        models = {}
        for family in s.families:
            config = model_config(family, n_layers=s.n_layers, max_seq_len=top, tiny=s.tiny)
            models[family] = random_model(config, device=s.device, dtype=getattr(torch, s.dtype))
            warm_len = min(2048, max(1, min(s.e2e_lengths) // 2 + 1))  # a length not measured
            warm = functools.partial(warmup_compile, models[family], s, length=warm_len)
            for rec in _guarded(lambda warm=warm: [warm()], family, 0):
                add(rec)
        last: dict[str, tuple[int, float]] = {}  # family -> (length, dense total s)
        for length in sorted(s.e2e_lengths):  # length-major: every family at each length
            for family in s.families:
                config = models[family].config
                backend, attn_ms = dense_at.get((family, length + s.gen_length),
                                                dense_at.get((family, length), (None, None)))
                if attn_ms is None and "kernel" not in what and s.device == "cuda":
                    backend, attn_ms = _dense_attention(config, length + s.gen_length, s)
                estimate = None
                if family in last:  # between linear and quadratic growth
                    prev_len, prev_s = last[family]
                    estimate = prev_s * (length / prev_len) ** 1.6
                case = functools.partial(e2e_records, models[family], length, s,
                                         dense_backend=backend, attn_ms_per_layer=attn_ms,
                                         estimate_s=estimate)
                for rec in _guarded(case, family, length):
                    add(rec)
                    if rec.get("mode") == "dense" and rec["kind"] == "e2e":
                        last[family] = (length, rec["total_s"])
                _free()
        models.clear()
        _free()
    return records


def _dense_attention(config: ModelConfig, length: int, s: SweepSettings) -> tuple[str, float]:
    dtype = getattr(torch, s.dtype)
    q = torch.randn(1, config.n_heads, length, config.head_dim, device=s.device, dtype=dtype)
    k = torch.randn(1, config.n_kv_heads, length, config.head_dim, device=s.device, dtype=dtype)
    d = fastest_dense(q, k, k, repeats=3)
    return d["best"], d["best_ms"]


def _guarded(fn: Callable[[], list[dict[str, Any]]], family: str,
             length: int) -> list[dict[str, Any]]:
    """Run one case; a failure (out of memory, a kernel that does not build) becomes an error
    record instead of ending the sweep."""
    try:
        return fn()
    except Exception as err:  # noqa: BLE001 - reported in the record, the sweep goes on
        _free()
        return [{"kind": "error", "family": family, "seq_len": length,
                 "error": f"{type(err).__name__}: " + str(err).splitlines()[0][:200]}]


def _free() -> None:
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# -- reporting ----------------------------------------------------------------------------------
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
    e2e = [r for r in records if r.get("kind") == "e2e"]
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
        rows = [r for r in records if r.get("kind") == kind and r.get("mode") not in ("dense",)
                and r.get("run", "warm") == "warm" and r.get("speedup") is not None]
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
    env = next((r["env"] for r in records if "env" in r), {})
    fig.suptitle(f"{env.get('gpu')}, torch {env.get('torch')}, triton {env.get('triton')}",
                 fontsize=9)
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
    if backend and r.get("kind") == "kernel" and not mode.startswith(backend):
        return f"{mode} [{backend}]"
    return mode
